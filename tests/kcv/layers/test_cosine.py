"""kcv.layers.CosineClassifier against NumPy cosines, and the embedding + cosine-head model
through the shared layer checks (reload, mixed precision, XLA, TFLite builtins + LiteRT)."""

import doctest

import keras
import numpy as np
import pytest

import kcv
from kcv.layers import CosineClassifier, cosine

from kcv_testing import check_layer, check_tflite


def _x(shape=(4, 6), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_check_layer():
    check_layer(lambda: CosineClassifier(5), _x())


def _embedding_with_cosine_head():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.UnitNormalization()(keras.layers.Dense(6)(x))
    return keras.Model(inputs, CosineClassifier(3, name="cosines")(x))


def test_embedding_model_with_cosine_head_converts_to_builtin_tflite():
    check_tflite(_embedding_with_cosine_head(), [_x((2, 8, 8, 1))])  # builtins + LiteRT parity


def test_outputs_are_numpy_cosines_in_range():
    x = _x((5, 7))
    layer = CosineClassifier(4, kernel_initializer="random_normal")
    got = np.asarray(layer(x))
    w = np.asarray(layer.kernel)
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.all(np.abs(got) <= 1 + 1e-6)


def test_scale_invariance_and_hand_case():
    layer = CosineClassifier(2)
    layer.build((None, 2))
    layer.kernel.assign(np.array([[3.0, 0.0], [0.0, 0.5]], "float32"))  # classes along x and y
    got = np.asarray(layer(np.array([[2.0, 2.0], [0.0, -7.0], [0.0, 0.0]], "float32")))
    s = np.sqrt(0.5)
    np.testing.assert_allclose(got, [[s, s], [0.0, -1.0], [0.0, 0.0]], atol=1e-6)  # 0 vector: 0


def test_cosine_head_with_am_softmax_gradient_is_finite_for_zero_embedding():
    import tensorflow as tf
    layer = CosineClassifier(3)
    x = tf.Variable(np.zeros((2, 4), "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(kcv.losses.am_softmax_loss([0, 1], layer(x)))
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


def test_config_keeps_every_argument():
    layer = CosineClassifier(7, kernel_initializer="he_normal", kernel_regularizer="l2",
                             epsilon=1e-6, name="head")
    again = CosineClassifier.from_config(layer.get_config())
    assert again.num_classes == 7 and again.epsilon == 1e-6
    assert isinstance(again.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(again.kernel_regularizer, keras.regularizers.L2)


def test_docstring_example_runs():
    result = doctest.testmod(cosine, extraglobs={"np": np})
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("make, match", [
    (lambda: CosineClassifier(0), r"`num_classes` must be a positive integer. Received: num_classes=0"),
    (lambda: CosineClassifier(3, epsilon=0), r"`epsilon` must be a positive number"),
    (lambda: CosineClassifier(3)(np.zeros((2, 3, 4), "float32")),
     r"CosineClassifier expects embeddings \[B, D\].*input_shape=\(2, 3, 4\)"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
