"""The shared test routines catch the defects they exist for (a check that cannot fail is no check)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import export

from kcv_testing import (
    check_config_round_trip,
    check_gradients,
    check_keras_reload,
    check_layer,
    check_loss,
    check_op,
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


# === check_loss ===

def _squared_error(y_true, y_pred, scale=1.0):
    """Per-sample mean squared error times `scale`, computed in float32."""
    diff = tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32)
    return scale * tf.reduce_mean(tf.square(diff), axis=-1)


@keras.saving.register_keras_serializable(package="kcv_meta")
class ScaledSquaredError(keras.losses.Loss):
    def __init__(self, scale=1.0, reduction="sum_over_batch_size", name="sse", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale = scale

    def call(self, y_true, y_pred):
        return _squared_error(y_true, y_pred, self.scale)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="kcv_meta")
class DisagreesWithFunction(ScaledSquaredError):
    def call(self, y_true, y_pred):
        return _squared_error(y_true, y_pred, 2.0 * self.scale)


@keras.saving.register_keras_serializable(package="kcv_meta")
class DropsSampleWeight(ScaledSquaredError):
    def __call__(self, y_true, y_pred, sample_weight=None):
        return super().__call__(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kcv_meta")
class ForgetsLossConfig(ScaledSquaredError):
    def get_config(self):
        return keras.losses.Loss.get_config(self)  # drops `scale`


@keras.saving.register_keras_serializable(package="kcv_meta")
class OtherInGraphMode(ScaledSquaredError):
    """Stands for a loss that takes another path in a `tf.function` (fit, evaluate)."""

    def call(self, y_true, y_pred):
        return _squared_error(y_true, y_pred, self.scale * (1.0 if tf.executing_eagerly() else 2.0))


class NotRegistered(ScaledSquaredError):
    pass


def _overflowing_error(y_true, y_pred, scale=1.0):
    """Squares in the input dtype: 300**2 = 90000 > float16 max 65504."""
    return scale * tf.reduce_mean(tf.square(y_pred - tf.cast(y_true, y_pred.dtype)), axis=-1)


@keras.saving.register_keras_serializable(package="kcv_meta")
class OverflowsLossInFloat16(ScaledSquaredError):
    def call(self, y_true, y_pred):
        return _overflowing_error(y_true, y_pred, self.scale)


def _loss_case(offset=1.0):
    rng = np.random.default_rng(5)
    y_true = rng.normal(size=(4, 3)).astype("float32")
    return y_true, y_true + offset * rng.normal(size=(4, 3)).astype("float32")


def test_a_correct_loss_passes_check_loss():
    y_true, y_pred = _loss_case()
    values = check_loss(_squared_error, ScaledSquaredError, y_true, y_pred, package="kcv_meta",
                        scale=3.0)
    np.testing.assert_allclose(values, 3.0 * ((y_pred - y_true) ** 2).mean(-1), rtol=1e-6)


@pytest.mark.parametrize("cls, loss_fn, offset, match", [
    (DisagreesWithFunction, _squared_error, 1.0, r"reduction='none'\) differs"),
    (DropsSampleWeight, _squared_error, 1.0, "with sample_weight differs"),
    (ForgetsLossConfig, _squared_error, 1.0, "does not return scale=3.0"),
    (NotRegistered, _squared_error, 1.0, "registered as"),
    (OtherInGraphMode, _squared_error, 1.0, "model.evaluate with the compiled loss differs"),
    (OverflowsLossInFloat16, _overflowing_error, 300.0, "not finite for float16"),
])
def test_check_loss_catches(cls, loss_fn, offset, match):
    y_true, y_pred = _loss_case(offset)
    with pytest.raises(AssertionError, match=match):
        check_loss(loss_fn, cls, y_true, y_pred, package="kcv_meta", scale=3.0)
# --- check_op --------------------------------------------------------------------------------


def _square_inputs(seed, dtype):
    return {"x": np.random.default_rng(seed).normal(size=(3, 2)).astype(dtype)}


def _checked_square(x):
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 2:
        raise ValueError(f"`x` must be rank 2. Received: x.shape={x.shape}")
    return _right_gradient_square(x)


@tf.custom_gradient
def _right_gradient_square(x):
    return x * x, lambda dy: 2.0 * x * dy


def _numpy_square(x):
    return np.square(x)


def _autodiff_square(x):
    return tf.square(tf.convert_to_tensor(x))


def test_check_op_passes_a_correct_op():
    check_op(_checked_square, _autodiff_square, _square_inputs,
             error_cases=[({"x": np.zeros(3)}, ValueError, r"rank 2.*\(3,\)")])


def test_check_op_catches_a_forward_that_differs_from_the_reference():
    with pytest.raises(AssertionError, match="forward output 0 differs"):
        check_op(lambda x: _checked_square(x) + 1e-3, _numpy_square, _square_inputs,
                 backward=False, gradients=False, xla=False)


def test_check_op_catches_a_changed_dtype():
    with pytest.raises(AssertionError, match="output 0 is float32 for float64 inputs"):
        check_op(lambda x: tf.cast(tf.square(x), tf.float32), _numpy_square, _square_inputs,
                 atol={"float64": 1e-6}, backward=False, gradients=False, xla=False)


def test_check_op_catches_a_wrong_gradient():
    def wrong(x):  # check_op passes keywords, which tf.custom_gradient does not differentiate
        return _wrong_gradient_square(x)

    with pytest.raises(AssertionError, match="gradient of argument 0 disagrees"):
        check_op(wrong, _numpy_square, _square_inputs, backward=False, xla=False)  # the NumPy reference has no gradient
    with pytest.raises(AssertionError, match="gradient of `x` differs from the reference"):
        check_op(wrong, _autodiff_square, _square_inputs, gradients=False, xla=False)


def test_check_op_catches_an_op_that_fails_under_xla():
    def host_square(x):  # a NumPy call: XLA cannot compile it
        return tf.numpy_function(np.square, [x], tf.as_dtype(x.dtype))

    check_op(host_square, _numpy_square, _square_inputs, backward=False, gradients=False,
             xla=False)  # eager is right...
    with pytest.raises(tf.errors.InvalidArgumentError, match="PyFunc|unsupported"):
        check_op(host_square, _numpy_square, _square_inputs, backward=False, gradients=False)


def test_check_op_catches_an_op_that_differs_in_a_graph_or_under_xla():
    from custom_ops._context import in_xla_context

    def eager_only_offset(x):  # a Python branch on the execution mode
        return tf.square(x) + (0.0 if tf.executing_eagerly() else 1.0)

    def xla_only_offset(x):
        return tf.square(x) + (1.0 if in_xla_context() else 0.0)

    with pytest.raises(AssertionError, match="output 0 under tf.function differs from eager"):
        check_op(eager_only_offset, _numpy_square, _square_inputs, backward=False)
    with pytest.raises(AssertionError, match="output 0 under XLA differs from eager"):
        check_op(xla_only_offset, _numpy_square, _square_inputs, backward=False)


def test_check_op_catches_a_gradient_that_differs_under_xla():
    from custom_ops._context import in_xla_context

    def square(x):
        @tf.custom_gradient
        def fn(x):
            scale = 3.0 if in_xla_context() else 2.0  # wrong only when compiled
            return x * x, lambda dy: scale * x * dy

        return fn(x)

    check_op(square, _autodiff_square, _square_inputs, xla=False)
    with pytest.raises(AssertionError, match="gradient 0 under XLA differs from eager"):
        check_op(square, _autodiff_square, _square_inputs)


def test_check_op_catches_an_error_case_that_is_not_raised_or_says_something_else():
    with pytest.raises(AssertionError, match=r"error case \['x'\] did not raise ValueError"):
        check_op(lambda x: _right_gradient_square(x), _autodiff_square, _square_inputs,
                 error_cases=[({"x": np.zeros(3)}, ValueError, "rank 2")])
    with pytest.raises(AssertionError, match="ValueError for \\['x'\\] says"):
        check_op(_checked_square, _autodiff_square, _square_inputs,
                 error_cases=[({"x": np.zeros(3)}, ValueError, "must be positive")])


# --- dict outputs ----------------------------------------------------------------------------


def test_keras_reload_compares_dict_outputs_key_by_key(monkeypatch):
    from kcv.models import MobileNetV1

    model = MobileNetV1((32, 32, 3), alpha=0.25, include_top=False, return_features=True)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    check_keras_reload(model, [x])
    # A file that loses the weights: the same architecture, freshly initialised, is saved.
    monkeypatch.setattr(model, "save", keras.models.clone_model(model).save)
    with pytest.raises(AssertionError, match="reload differs"):
        check_keras_reload(model, [x])
