"""Export: SavedModel served without kcv, TFLite conversions, Flex refusal, verification."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import export
from kcv.models import UNet

from kcv_testing import run_saved_model_without_kcv


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    return UNet((16, 16, 3), 3, filters=4, depth=2)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def unet_tflite(unet, tmp_path_factory):
    """The float32 `.tflite` file of `unet` written by `export.to_tflite` (converted once for
    the tests that read it)."""
    return export.to_tflite(unet, tmp_path_factory.mktemp("tflite") / "m.tflite")


def _tiny_model():
    """A one-layer model: for the tests of file handling, which need a conversion, not UNet's."""
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))


def test_saved_model_runs_in_a_process_that_cannot_import_kcv(unet, images, tmp_path):
    path = export.to_saved_model(unet, tmp_path / "unet" / "1")
    names, out = run_saved_model_without_kcv(path, {"image": images})
    assert names == ["image"] and sorted(out) == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"], unet(images), atol=1e-6)


def test_existing_export_needs_overwrite(tmp_path):
    model = _tiny_model()
    path = tmp_path / "m.tflite"
    export.to_tflite(model, path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.to_tflite(model, path)
    export.to_tflite(model, path, overwrite=True)
    export.to_saved_model(model, tmp_path / "sm")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.to_saved_model(model, tmp_path / "sm")


def test_float32_tflite_matches_keras_and_is_builtins_only(unet, unet_tflite, images):
    report = export.verify(unet, unet_tflite, images, num_runs=3)
    assert report["max_abs_diff"] <= 1e-4
    assert report["builtins_only"]
    assert "CONV_2D" in report["ops"] and "TRANSPOSE_CONV" in report["ops"]


def test_verify_reports_metric_fn_of_keras_and_litert_outputs():
    a = keras.Input((3,), name="x")
    model = keras.Model(a, {"twice": keras.layers.Rescaling(2.0)(a),
                            "plus": keras.layers.Rescaling(1.0, offset=1.0)(a)})
    x = np.arange(6, dtype="float32").reshape(2, 3)
    seen = []

    def metric_fn(keras_outputs, tflite_outputs):
        seen.append((keras_outputs, tflite_outputs))
        return np.float32(0.25)

    content = export.convert_to_tflite(model, batch_size=2)
    report = export.verify(model, content, x, num_runs=1, metric_fn=metric_fn)
    assert report["metric"] == 0.25 and type(report["metric"]) is float  # JSON-ready
    (keras_outputs, tflite_outputs), = seen
    for outputs in (keras_outputs, tflite_outputs):  # both in output-name order: plus, twice
        assert len(outputs) == 2
        np.testing.assert_allclose(outputs[0], x + 1.0, atol=1e-6)
        np.testing.assert_allclose(outputs[1], 2.0 * x, atol=1e-6)
    assert "metric" not in export.verify(model, content, x, num_runs=1)


def test_float16_and_dynamic_quantization_shrink_the_file_and_stay_close(unet, unet_tflite,
                                                                          images):
    sizes, diffs = {}, {}
    for q in (None, "float16", "dynamic"):
        if q is None:
            with open(unet_tflite, "rb") as f:
                content = f.read()
        else:
            content = export.convert_to_tflite(unet, quantization=q)
        sizes[q] = len(content)
        diffs[q] = export.verify(unet, content, images, num_runs=1)["max_abs_diff"]
    assert sizes["float16"] < sizes[None] and sizes["dynamic"] < sizes[None]
    assert diffs["float16"] < 1e-2 and diffs["dynamic"] < 5e-2


def test_int8_full_integer(unet, images):
    with pytest.raises(ValueError, match="representative_data"):
        export.convert_to_tflite(unet, quantization="int8")
    content = export.convert_to_tflite(unet, quantization="int8",
                                       representative_data=[images[i:i + 1] for i in range(4)])
    ops = export.tflite_ops(content)
    assert "QUANTIZE" in ops and "CONV_2D" in ops
    out = export.run_tflite(content, images)[0]
    assert np.abs(out - np.asarray(unet(images))).max() < 0.1  # softmax outputs in [0, 1]
    io = export.convert_to_tflite(unet, quantization="int8", int8_io=True,
                                  representative_data=[images[i:i + 1] for i in range(4)])
    out_io = export.run_tflite(io, images)[0]  # inputs quantized, outputs de-quantized for us
    assert np.abs(out_io - np.asarray(unet(images))).max() < 0.1


def test_flex_ops_are_refused_with_their_names():
    inputs = keras.Input((4,))

    class NeedsFlex(keras.layers.Layer):
        def call(self, x):
            return tf.math.erfinv(tf.clip_by_value(x, -0.5, 0.5))

    model = keras.Model(inputs, NeedsFlex()(inputs))
    with pytest.raises(export.FlexOpsError, match="Erfinv") as info:
        export.convert_to_tflite(model)
    assert info.value.ops == ["Erfinv"]


def test_multiple_inputs_and_outputs_keep_their_order():
    a = keras.Input((3,), name="zeta")
    b = keras.Input((3,), name="alpha")
    s = keras.layers.Add(name="z_sum")([a, keras.layers.Rescaling(2.0)(b)])
    d = keras.layers.Subtract(name="a_diff")([a, b])
    model = keras.Model([a, b], [s, d])
    xa, xb = np.ones((2, 3), "float32"), np.full((2, 3), 10.0, "float32")
    content = export.convert_to_tflite(model, batch_size=None)
    out = export.run_tflite(content, [xa, xb], output_names=export.output_names(model),
                            input_names=export.input_names(model))
    np.testing.assert_allclose(out[0], xa + 2 * xb)
    np.testing.assert_allclose(out[1], xa - xb)
    out = export.run_tflite(content, {"alpha": xb, "zeta": xa}, output_names=["a_diff", "z_sum"])
    np.testing.assert_allclose(out[0], xa - xb)
    np.testing.assert_allclose(out[1], xa + 2 * xb)
    with pytest.raises(ValueError, match="input_names"):
        export.run_tflite(content, [xa, xb])


def test_inputs_with_different_leading_sizes():
    # e.g. features [N, ...] and boxes [K, 4]: each input keeps its own static leading size
    a = keras.Input((3,), name="feat")
    b = keras.Input((2,), name="boxes")
    s = keras.layers.Concatenate(axis=0, name="stack")(
        [keras.layers.Dense(2, name="proj")(a), b])
    model = keras.Model([a, b], s)
    xa = np.random.rand(2, 3).astype("float32")
    xb = np.random.rand(5, 2).astype("float32")
    content = export.convert_to_tflite(model, input_shapes=[xa.shape, xb.shape])
    out = export.run_tflite(content, [xa, xb], input_names=export.input_names(model))[0]
    np.testing.assert_allclose(out, model([xa, xb]), atol=1e-6)


def test_bad_arguments(unet, unet_tflite):
    with pytest.raises(ValueError, match="quantization"):
        export.convert_to_tflite(unet, quantization="int4")
    with pytest.raises(ValueError, match="inputs"):
        export.run_tflite(unet_tflite, [np.zeros((1, 16, 16, 3))] * 2)


def test_dict_output_models_export(tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    c2 = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="c2conv")(inputs)
    c3 = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c3conv")(c2)
    model = keras.Model(inputs, {"C3": c3, "C2": c2})
    assert export.output_names(model) == ["C2", "C3"]
    x = np.random.rand(2, 8, 8, 3).astype("float32")
    report = export.verify(model, export.convert_to_tflite(model, batch_size=2), x, num_runs=1)
    assert report["max_abs_diff"] <= 1e-5
    path = export.to_saved_model(model, tmp_path / "sm")
    out = tf.saved_model.load(path).signatures["serving_default"](image=tf.constant(x))
    np.testing.assert_allclose(out["C3"], model(x)["C3"], atol=1e-6)


def _entries(folder):
    return sorted(os.listdir(folder))


def _adaptive_roi_align_model():
    from kcv.layers import RoIAlign

    inputs = [keras.Input((8, 8, 2)), keras.Input((4,)), keras.Input((), dtype="int32")]
    return keras.Model(inputs, RoIAlign(2, sampling_ratio=-1)(inputs))


@pytest.mark.parametrize("case", ["converted", "refused_as_flex", "refused_while_saving"])
def test_conversion_leaves_no_temporary_directory(case, tmp_path, monkeypatch):
    # A conversion goes through a temporary SavedModel (two for a Flex refusal that has to list
    # the ops); none may be left in the temp folder, also when writing the SavedModel fails
    # (adaptive RoIAlign refuses export). The first conversion is not counted: autograph caches
    # its generated source there, one file per converted function for the life of the process.
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    assert tempfile.gettempdir() == str(temp)
    inputs = keras.Input((4,))
    model, error = {
        "converted": (_tiny_model(), None),
        "refused_as_flex": (keras.Model(inputs, keras.layers.Activation(tf.math.erfinv)(inputs)),
                            export.FlexOpsError),
        "refused_while_saving": (_adaptive_roi_align_model(), ValueError),
    }[case]

    def convert(name):
        if error is None:
            export.to_tflite(model, tmp_path / name)
        else:
            with pytest.raises(error):
                export.to_tflite(model, tmp_path / name)

    convert("first.tflite")
    before = _entries(temp)
    convert("second.tflite")
    assert _entries(temp) == before
