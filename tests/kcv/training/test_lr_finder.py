"""LR range test: the recorded curve against a NumPy simulation of SGD, divergence stop,
restoration of weights/optimizer/rate (checked by continuing training next to an untouched
twin), smoothing and suggestions against hand-computed values, the PNG."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv import _compat
from kcv.training import LRFinder, find_lr, smooth_losses, suggest_lr

W0, SLOPE = 0.5, 3.0


def _line_problem(n=8, seed=0):
    """y = 3x + noise: the loss floor is the noise (not 0, where float32 rounding would rule)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1)).astype(np.float32)
    return x, (SLOPE * x + 0.3 * rng.normal(size=(n, 1))).astype(np.float32)


def _line_model(optimizer):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant(W0))])
    model.compile(optimizer, "mse")
    return model


def _simulate_sgd(x, y, lrs):
    """Losses of plain SGD on mean((w x - y)^2), one full batch per step."""
    w, losses = W0, []
    for lr in lrs:
        r = w * x[:, 0] - y[:, 0]
        losses.append(np.mean(r ** 2))
        w -= lr * np.mean(2 * r * x[:, 0])
    return np.array(losses)


def test_curve_matches_numpy_sgd_simulation():
    x, y = _line_problem()
    model = _line_model(keras.optimizers.SGD(0.123))
    ds = tf.data.Dataset.from_tensors((x, y))
    finder = find_lr(model, ds, start_lr=1e-3, end_lr=0.5, num_steps=20, smoothing=0.9)
    expected_lrs = 1e-3 * (0.5 / 1e-3) ** (np.arange(20) / 19)
    np.testing.assert_allclose(finder.learning_rates, expected_lrs, rtol=1e-6)
    np.testing.assert_allclose(finder.losses, _simulate_sgd(x, y, expected_lrs), rtol=2e-5)
    assert not finder.stopped_early
    np.testing.assert_allclose(float(model.layers[0].kernel[0, 0]), W0)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.123, rtol=1e-6)


def test_rate_applied_by_optimizer_is_the_sweep():
    x, y = _line_problem()
    model = _line_model(keras.optimizers.SGD(0.01))
    finder = LRFinder(1e-4, 1e-1, num_steps=6, smoothing=0.0)
    seen = []
    spy = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(float(model.optimizer.learning_rate)))
    # As a callback in the user's own fit: the finder stops it after num_steps batches.
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=50, epochs=3, shuffle=False,
              callbacks=[finder, spy], verbose=0)
    np.testing.assert_allclose(seen, 1e-4 * 1000 ** (np.arange(6) / 5), rtol=1e-6)
    np.testing.assert_allclose(finder.smoothed_losses, finder.losses)  # smoothing 0


def test_stops_when_loss_diverges():
    x, y = _line_problem()
    model = _line_model(keras.optimizers.SGD(0.01))
    finder = find_lr(model, tf.data.Dataset.from_tensors((x, y)), start_lr=1e-3, end_lr=100.0,
                     num_steps=60, smoothing=0.5)
    n = len(finder.losses)
    assert finder.stopped_early and 5 < n < 60
    lrs = 1e-3 * 1e5 ** (np.arange(n) / 59)
    expected = _simulate_sgd(x, y, lrs)
    np.testing.assert_allclose(finder.losses[:-5], expected[:-5], rtol=1e-4)
    # once diverging, each step multiplies float32 rounding by |1 - 2 lr mean(x^2)| > 1
    np.testing.assert_allclose(finder.losses, expected, rtol=5e-2)
    s = smooth_losses(finder.losses, 0.5)
    assert s[-1] > 4 * s[:-1].min()
    assert all(s[i] <= 4 * s[:i + 1].min() for i in range(n - 1))
    # SGD on this quadratic diverges when lr > 1 / mean(x^2): the stop comes after that.
    assert lrs[-1] > 1.0 / np.mean(x ** 2)


def _conv_model(optimizer, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    outputs = keras.layers.Conv2D(3, 1, dtype="float32")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("variant", ["adam", "schedule", "mixed_float16"])
def test_restores_state_and_training_continues_like_an_untouched_twin(variant):
    if variant == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")

    def optimizer():
        if variant == "schedule":
            return keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(
                0.05, decay_steps=2, decay_rate=0.5), momentum=0.9)
        return keras.optimizers.Adam(1e-2)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=(16, 8, 8)).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model, twin = _conv_model(optimizer(), 7), _conv_model(optimizer(), 7)
    for m in (model, twin):  # both have moments, iterations and a decayed rate by now
        m.fit(ds, epochs=1, verbose=0, shuffle=False)
    before_w = [np.array(w) for w in model.get_weights()]
    before_opt = [np.array(v) for v in model.optimizer.variables]

    finder = find_lr(model, ds, start_lr=1e-5, end_lr=10.0, num_steps=15)
    assert len(finder.losses) >= 3
    for a, b in zip(model.get_weights(), before_w):
        np.testing.assert_array_equal(a, b)
    assert len(model.optimizer.variables) == len(before_opt)
    for a, b in zip(model.optimizer.variables, before_opt):
        np.testing.assert_array_equal(np.array(a), b)
    if variant == "schedule":
        assert isinstance(_compat.get_learning_rate(model.optimizer),
                          keras.optimizers.schedules.ExponentialDecay)

    for m in (model, twin):
        m.fit(ds, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_smoothing_with_bias_correction_hand_computed():
    # beta 0.5: avg = 0.5, 1.25, 2.125; corrections 0.5, 0.75, 0.875
    np.testing.assert_allclose(smooth_losses([1.0, 2.0, 3.0], 0.5),
                               [1.0, 1.25 / 0.75, 2.125 / 0.875])
    np.testing.assert_allclose(smooth_losses([4.0, 4.0, 4.0], 0.98), [4.0, 4.0, 4.0])


def test_suggestions_on_an_analytic_curve():
    u = np.linspace(-6, 0, 61)  # log10(lr), step 0.1
    lrs = 10.0 ** u

    def f(v):
        return -np.tanh(2 * (v + 3)) + np.exp(3 * (v + 0.5))

    # steepest descent of -tanh(2(u+3)) is at u = -3 (the exp term adds < 2e-3 to the slope)
    fine = np.linspace(-6, 0, 600001)
    u_min = fine[np.argmin(f(fine))]
    out = suggest_lr(lrs, f(u))
    np.testing.assert_allclose(out["steepest"], 1e-3, rtol=1e-9)
    np.testing.assert_allclose(np.log10(out["minimum_over_10"] * 10), u_min, atol=0.05)


def test_plot_writes_png(tmp_path):
    x, y = _line_problem()
    finder = LRFinder(1e-3, 1.0, num_steps=12)
    with pytest.raises(ValueError, match="run the range test first"):
        finder.plot(str(tmp_path / "a.png"))
    find_model = _line_model(keras.optimizers.SGD(0.1))
    find_model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=12, shuffle=False,
                   callbacks=[finder], verbose=0)
    path = finder.plot(str(tmp_path / "sub" / "lr.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, match", [
    ({"start_lr": 0.0}, "start_lr"),
    ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"),
    ({"num_steps": 1}, "num_steps=1"),
    ({"smoothing": 1.0}, "smoothing"),
    ({"divergence_threshold": 0.5}, "divergence_threshold"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRFinder(**kwargs)


def test_needs_compiled_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compile"):
        find_lr(model, tf.data.Dataset.from_tensors((np.ones((2, 1)), np.ones((2, 1)))),
                num_steps=3)
