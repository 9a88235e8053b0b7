"""The shared test routines catch the defects they exist for (a check that cannot fail is no check)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import export

from kcv_testing import (
    check_config_round_trip,
    check_gradients,
    check_layer,
    check_tflite,
)


class ForgetsConfig(keras.layers.Layer):
    def __init__(self, scale=2.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return super().get_config()  # drops `scale`


class NeedsFlex(keras.layers.Layer):
    def call(self, x):
        return tf.math.erfinv(tf.clip_by_value(x, -0.5, 0.5))


class OverflowsInFloat16(keras.layers.Layer):
    def call(self, x):
        return tf.exp(x * 0.0 + 12.0) * 1e-5  # exp(12) = 162755 > float16 max 65504


@tf.custom_gradient
def _wrong_gradient_square(x):
    return x * x, lambda dy: dy * x  # should be 2 * x * dy


def test_a_standard_layer_passes():
    check_layer(lambda: keras.layers.Dense(3), np.ones((2, 4), "float32"))


def test_config_round_trip_catches_missing_argument():
    x = np.ones((1, 2), "float32")
    with pytest.raises(AssertionError, match="rebuilt from its config differs"):
        check_config_round_trip(ForgetsConfig(scale=3.0), [x])
    check_config_round_trip(ForgetsConfig(scale=2.0), [x])  # default value: nothing lost
    check_config_round_trip(keras.layers.Dense(3), [x])


def test_tflite_check_catches_flex_ops():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, NeedsFlex()(inputs))
    with pytest.raises(export.FlexOpsError, match="Erfinv"):
        check_tflite(model, [np.zeros((1, 4), "float32")])


def test_mixed_precision_check_catches_float16_overflow():
    x = np.ones((2, 3), "float32")
    with pytest.raises(AssertionError, match="non-finite"):
        check_layer(lambda: OverflowsInFloat16(), x, config=False, keras_reload=False,
                    xla=False, tflite=False)


def test_gradient_check_catches_a_wrong_gradient():
    check_gradients(lambda x: x * x, [np.array([0.5, -1.5])])
    with pytest.raises(AssertionError, match="gradient of argument 0"):
        check_gradients(_wrong_gradient_square, [np.array([0.5, -1.5])])


def test_models_need_a_factory():
    inputs = keras.Input((2,))
    with pytest.raises(TypeError, match="factory"):
        check_layer(keras.Model(inputs, keras.layers.Dense(1)(inputs)), np.ones((1, 2)))
