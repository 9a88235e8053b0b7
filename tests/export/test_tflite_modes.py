"""TFLite modes: full int8 with uint8/int8 I/O, calibration from tf.data, dynamic sizes with
`resize_tensor_input`, and the builtins-only audit of every kcv model family (full integer;
int8 weights for detection)."""

import keras
import numpy as np
import pytest

import export
from export import evaluate
from export._litert import interpreter
from kcv.data import shapes_dataset
from kcv.models import (
    VGG16,
    DeepLabV3,
    HRNet,
    HRNetPose,
    MobileNetV1,
    MobileNetV2,
    ResNet18,
    UNet,
    UNetPlusPlus,
    VisionTransformer,
)

from kcv_testing import tiny_faster_rcnn


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    return UNet((16, 16, 3), 4, filters=4, depth=1)


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_int8_io_dtypes_quantize_with_the_models_own_parameters(unet, io_dtype):
    from ai_edge_litert.interpreter import Interpreter

    data = shapes_dataset(8, image_size=16, batch_size=4, seed=0)  # (images, masks) batches
    content = export.convert_to_tflite(unet, quantization="int8", representative_data=data,
                                       io_dtype=io_dtype)
    runner = Interpreter(model_content=content).get_signature_runner()
    (detail,) = runner.get_input_details().values()
    assert detail["dtype"] == np.dtype(io_dtype)
    scale, zero = detail["quantization"]
    if io_dtype == "uint8":  # calibrated on [0, 1] images: x = scale * (q - zero)
        assert zero == 0 and scale == pytest.approx(1 / 255, rel=0.05)
    x = _images(2, 16, seed=1)
    out = export.run_tflite(content, x)[0]
    assert np.abs(out - np.asarray(unet(x))).max() < 0.1


def test_calibration_steps_limit_what_is_drawn(unet):
    drawn = []

    def batches():
        for i in range(10):
            drawn.append(i)
            yield _images(1, 16, seed=i)

    export.convert_to_tflite(unet, quantization="int8", representative_data=batches(),
                             calibration_steps=3)
    assert len(drawn) <= 4  # three used, at most one more started


def test_io_dtype_errors(unet):
    with pytest.raises(ValueError, match="io_dtype"):
        export.convert_to_tflite(unet, io_dtype="int16")
    with pytest.raises(ValueError, match="needs quantization='int8'"):
        export.convert_to_tflite(unet, quantization="dynamic", io_dtype="uint8")


def test_fully_convolutional_model_is_resized_in_the_interpreter():
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(1)
    model = UNet((None, None, 3), 2, filters=4, depth=1)
    content = export.convert_to_tflite(model, input_shapes=[(1, None, None, 3)])
    interp = Interpreter(model_content=content)
    (detail,) = interp.get_input_details()
    assert list(detail["shape_signature"]) == [1, -1, -1, 3]
    for height, width in ((24, 32), (16, 16)):
        x = _images(1, 1, seed=height)[:, :1, :1] * np.ones((1, height, width, 3), "float32")
        x = x + _images(1, max(height, width), seed=width)[:, :height, :width]
        interp.resize_tensor_input(detail["index"], [1, height, width, 3])
        interp.allocate_tensors()
        interp.set_tensor(detail["index"], x)
        interp.invoke()
        out = interp.get_tensor(interp.get_output_details()[0]["index"])
        np.testing.assert_allclose(out, model(x), atol=1e-5)
        np.testing.assert_allclose(export.run_tflite(content, x)[0], model(x), atol=1e-5)


def _detector():
    model = tiny_faster_rcnn(64)
    model(np.zeros((1, 64, 64, 3), "float32"))  # a subclassed model: built by a call
    return model


_FAMILIES = {
    "mobilenet_v1": lambda: MobileNetV1((32, 32, 3), alpha=0.25, classes=4),
    "mobilenet_v2": lambda: MobileNetV2((32, 32, 3), alpha=0.35, classes=4),
    "resnet18": lambda: ResNet18((32, 32, 3), classes=4),
    "vgg16": lambda: VGG16((32, 32, 3), classes=4),
    "unet": lambda: UNet((16, 16, 3), 3, filters=4, depth=2),
    "unet_plus_plus": lambda: UNetPlusPlus((16, 16, 3), 3, filters=4, depth=2,
                                           deep_supervision=False),
    "deeplab_v3_plus": lambda: DeepLabV3((32, 32, 3), 3, alpha=0.35, filters=8, decoder=True),
    "hrnet": lambda: HRNet((32, 32, 3), 3, width=4, num_modules=(1, 1, 1, 1), num_blocks=1,
                           stem_filters=8),
    "hrnet_pose": lambda: HRNetPose((32, 32, 3), 5, width=4, num_modules=(1, 1, 1, 1),
                                    num_blocks=1, stem_filters=8),
    "vit": lambda: VisionTransformer((16, 16, 3), 4, patch_size=8, hidden_dim=16, num_layers=1,
                                     num_heads=2, mlp_dim=32),
    "faster_rcnn": _detector,  # int8 weights here; full int8: test_faster_rcnn_deploy.py
}
_SLOW = {"mobilenet_v2", "resnet18", "vgg16", "hrnet", "deeplab_v3_plus", "hrnet_pose",
         "faster_rcnn"}  # big or many ops
_DETECTION_OUTPUTS = ["boxes", "scores", "classes", "num_detections"]


def _check_detections(content, model, x):
    got = dict(zip(_DETECTION_OUTPUTS,
                   export.run_tflite(content, x, output_names=_DETECTION_OUTPUTS)))
    want = model(x, training=False)
    for name in _DETECTION_OUTPUTS:
        assert got[name].shape == tuple(want[name].shape), name
    boxes = got["boxes"][np.arange(got["boxes"].shape[1]) < got["num_detections"][:, None]]
    size = x.shape[1]
    assert np.isfinite(got["scores"]).all() and ((boxes >= 0) & (boxes <= size)).all()
    assert set(np.unique(got["classes"])) <= {0, 1, 2}


@pytest.mark.parametrize("family", [
    pytest.param(name, marks=pytest.mark.slow) if name in _SLOW else name for name in _FAMILIES])
def test_every_family_converts_to_builtins_with_integer_weights(family):
    keras.utils.set_random_seed(0)
    model = _FAMILIES[family]()
    size = model.inputs[0].shape[1] if family != "faster_rcnn" else 64
    x = _images(2, size, seed=9)
    if family == "faster_rcnn":
        # int8 weights with float activations; the detector's full int8 (float post-processing)
        # has its own test in tests/kcv/models/detection/test_faster_rcnn_deploy.py.
        content = export.convert_to_tflite(model, quantization="dynamic")
    else:
        calibration = [_images(1, size, seed=i) for i in range(4)]
        content = export.convert_to_tflite(model, quantization="int8", io_dtype="uint8",
                                           representative_data=calibration)
    ops, size_bytes = evaluate.ops_and_size(content)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    assert {"CONV_2D", "FULLY_CONNECTED"} & set(ops)
    if family == "faster_rcnn":
        # the graph (NMS loops, RoIAlign, anchors) outweighs the few weights: count the int8
        # tensors instead (dynamic range leaves kernels under 1,024 values and biases float)
        int8 = sum(int(np.prod(t["shape"])) for t in interpreter(content).get_tensor_details()
                   if t["dtype"] == np.int8)
        assert int8 > 0.8 * model.count_params(), (int8, model.count_params())
        _check_detections(content, model, x)
        return
    assert size_bytes < 4 * model.count_params() / 3 + 200_000  # int8 weights, not float32
    expected = np.asarray(model(x), np.float32)
    got = evaluate.predict(content, x)
    assert got.shape == expected.shape and np.isfinite(got).all()
    # within a tenth of the outputs' spread, or two uint8 output steps (1/256 for softmax) for
    # an untrained model whose outputs are nearly uniform
    tolerance = max(0.1 * float(expected.max() - expected.min()), 2 / 256)
    assert np.abs(got - expected).mean() < tolerance, family


def test_keep_float_leaves_the_named_ops_in_float(unet):
    calibration = [_images(1, 16, seed=i) for i in range(4)]
    full = export.convert_to_tflite(unet, quantization="int8", representative_data=calibration)
    mixed = export.convert_to_tflite(unet, quantization="int8", representative_data=calibration,
                                     keep_float=["SOFTMAX"])
    from ai_edge_litert.interpreter import Interpreter

    def softmax_input_dtypes(content):
        interp = Interpreter(model_content=content)
        tensors = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
        return {tensors[i] for op in interp._get_ops_details() if op["op_name"] == "SOFTMAX"
                for i in op["inputs"]}

    assert softmax_input_dtypes(full) == {np.int8}
    assert softmax_input_dtypes(mixed) == {np.float32}
    x = _images(2, 16, seed=5)
    assert np.abs(export.run_tflite(mixed, x)[0] - np.asarray(unet(x))).max() < 0.1
    with pytest.raises(ValueError, match="keep_float"):
        export.convert_to_tflite(unet, quantization="dynamic", keep_float=["SOFTMAX"])
