"""Serving signatures: uint8/float/bytes images of any size in, named results per family out.

The expected numbers come from the Keras model itself run on images resized by
`keras.layers.Resizing` (bilinear) and scaled by hand, not from the exporter.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import export
from kcv.models import UNet, VisionTransformer


def _resize(images, height, width):
    return np.asarray(keras.layers.Resizing(height, width, interpolation="bilinear")(
        np.asarray(images, "float32")))


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    return UNet((16, 16, 3), 3, filters=4, depth=2)


@pytest.fixture(scope="module")
def unet_export(unet, tmp_path_factory):
    path = export.to_saved_model(unet, tmp_path_factory.mktemp("sm") / "unet", serving="uint8",
                                 version=1)
    return path, tf.saved_model.load(path)


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype("uint8")


def test_versioned_layout_and_signatures(unet_export):
    path, loaded = unet_export
    assert path.endswith("/unet/1")
    assert sorted(loaded.signatures) == ["serving_bytes", "serving_default", "serving_float",
                                         "serving_uint8"]
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]


def test_segmentation_uint8_at_the_model_size_matches_keras(unet, unet_export):
    x = _pixels((2, 16, 16, 3))
    out = unet_export[1].signatures["serving_default"](image=tf.constant(x))
    expected = np.asarray(unet(x.astype("float32") / 255.0))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["mask"], expected.argmax(-1))
    assert out["mask"].dtype == tf.int32


@pytest.mark.parametrize("signature", ["serving_uint8", "serving_float"])
def test_segmentation_of_any_size_comes_back_at_the_size_sent(unet, unet_export, signature):
    x = _pixels((1, 37, 23, 3), seed=1)
    sent = x if signature == "serving_uint8" else x.astype("float32") / 255.0
    out = unet_export[1].signatures[signature](image=tf.constant(sent))
    model_input = _resize(x, 16, 16) / 255.0
    expected = _resize(unet(model_input), 37, 23)
    assert out["mask"].shape == (1, 37, 23)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    agree = np.mean(np.asarray(out["mask"]) == expected.argmax(-1))
    assert agree > 0.999  # ties in argmax aside


def test_encoded_bytes_decode_to_the_same_answer(unet, unet_export):
    x = _pixels((2, 20, 12, 3), seed=2)
    png = [tf.io.encode_png(image).numpy() for image in x]  # lossless
    out = unet_export[1].signatures["serving_bytes"](image_bytes=tf.constant(png))
    expected = np.asarray(unet(_resize(x, 16, 16) / 255.0))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["image_size"], [[20, 12], [20, 12]])


@pytest.mark.parametrize("logits", [False, True])
def test_classification_outputs(logits, tmp_path):
    keras.utils.set_random_seed(0)
    if logits:
        model = VisionTransformer((16, 16, 3), 5, patch_size=8, hidden_dim=8, num_layers=1,
                                  num_heads=2, mlp_dim=16)
    else:
        inputs = keras.Input((24, 24, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    size = model.inputs[0].shape[1]
    path = export.to_saved_model(model, tmp_path / "c", serving="uint8", preprocess="symmetric")
    x = _pixels((3, 40, 50, 3), seed=3)
    out = tf.saved_model.load(path).signatures["serving_default"](image=tf.constant(x))
    scores = np.asarray(model(_resize(x, size, size) / 127.5 - 1.0))
    expected = np.asarray(keras.activations.softmax(scores)) if logits else scores
    assert sorted(out) == ["class", "probabilities"]
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["class"], expected.argmax(-1))


class _CornerDetector(keras.Model):
    """Detects one box: the top-left quarter of the image it is given, with score 0.9.

    Its `call` returns a training-style tensor; `serving_signature` is the exporter's hook, the
    one kcv's detectors have.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, images):
        return self.dense(keras.ops.mean(images, axis=(1, 2)))

    def serving_signature(self, dtype, batch_size):
        spec = tf.TensorSpec([batch_size, 32, 32, 3], dtype, name="images")

        def serve(images):
            images = tf.cast(images, tf.float32)
            batch = tf.shape(images)[0]
            hw = tf.cast(tf.shape(images)[1:3], tf.float32)
            box = tf.concat([tf.zeros(2), hw / 2], axis=0)
            return {"boxes": tf.tile(box[None, None], [batch, 1, 1]),
                    "scores": tf.fill([batch, 1], 0.9) + 0 * self(images),
                    "classes": tf.zeros([batch, 1], tf.int32),
                    "num_detections": tf.ones([batch], tf.int32)}

        return serve, [spec]


def test_detection_boxes_come_back_in_the_pixels_sent(tmp_path):
    inputs = keras.Input((32, 32, 3))
    model = _CornerDetector(name="corner_detector")
    model(inputs)
    path = export.to_saved_model(model, tmp_path / "det", serving="uint8", image_size=(32, 32))
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](image=tf.constant(_pixels((2, 64, 48, 3))))
    assert sorted(out) == ["boxes", "classes", "num_detections", "scores"]
    # the model sees 32 x 32 and answers [0, 0, 16, 16]; the image sent is 64 x 48
    np.testing.assert_allclose(out["boxes"], [[[0, 0, 32, 24]]] * 2, atol=1e-5)
    np.testing.assert_allclose(out["scores"], [[0.9]] * 2, atol=1e-6)
    np.testing.assert_array_equal(out["num_detections"], [1, 1])
    png = [tf.io.encode_png(_pixels((h, w, 3))).numpy() for h, w in ((64, 48), (16, 32))]
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(png))
    np.testing.assert_allclose(out["boxes"], [[[0, 0, 32, 24]], [[0, 0, 8, 16]]], atol=1e-5)


def test_old_calls_keep_the_models_own_signature(unet, tmp_path):
    path = export.to_saved_model(unet, tmp_path / "plain")
    fn = tf.saved_model.load(path).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["image"]
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(fn(image=tf.constant(x))["probabilities"], unet(x), atol=1e-6)


def test_bad_serving_arguments(unet, tmp_path):
    with pytest.raises(ValueError, match="serving"):
        export.to_saved_model(unet, tmp_path / "a", serving="int8")
    with pytest.raises(ValueError, match="preprocess"):
        export.to_saved_model(unet, tmp_path / "a", serving="uint8", preprocess="caffe")
    with pytest.raises(ValueError, match="task"):
        export.to_saved_model(unet, tmp_path / "a", serving="uint8", task="pose")
    with pytest.raises(ValueError, match="version"):
        export.to_saved_model(unet, tmp_path / "a", version=0)
    with pytest.raises(ValueError, match="image_size"):
        export.to_saved_model(unet, tmp_path / "a", serving="uint8", image_size=(16,))
    two = keras.Model(unet.inputs, [unet.outputs[0], unet.outputs[0]])
    with pytest.raises(ValueError, match="2 outputs"):
        export.to_saved_model(two, tmp_path / "b", serving="uint8")

