"""Schedules against their closed-form formulas (written here in NumPy), serialization, and use
inside `model.fit`."""

import keras
import numpy as np
import pytest

from kcv import _compat
from kcv.training import schedules as S

SPE = 3  # steps per epoch
STEPS = np.arange(0, 40)
EPOCH = np.floor(STEPS / SPE)


def _values(schedule):
    return np.array([float(schedule(s)) for s in STEPS])


def _sgdr(step, lr0, first, t_mul, m_mul, alpha):
    """SGDR by walking the periods: eta_min + (eta_max_i - eta_min) * (1 + cos(pi t / T_i)) / 2
    with eta_min = alpha * lr0 and, as Keras defines m_mul, eta_max_i - eta_min scaled by
    m_mul ** i."""
    start, length, i = 0.0, float(first), 0
    while step >= start + length:
        start += length
        length *= t_mul
        i += 1
    t = (step - start) / length
    eta_min = alpha * lr0
    return eta_min + (lr0 - eta_min) * m_mul ** i * 0.5 * (1 + np.cos(np.pi * t))


def _warmup_cosine(step, lr_init, peak, warm, decay, alpha):
    if step < warm:
        return lr_init + (peak - lr_init) * step / warm
    t = min(step - warm, decay)
    return peak * (alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * t / decay)))


CASES = {
    "step": (lambda: S.StepDecay(0.1, step_size=4, steps_per_epoch=SPE, gamma=0.5),
             0.1 * 0.5 ** np.floor(EPOCH / 4)),
    "exponential": (lambda: S.ExponentialDecay(2e-4, steps_per_epoch=SPE, gamma=0.9),
                    2e-4 * 0.9 ** EPOCH),
    "multistep": (lambda: S.MultiStepDecay(0.1, milestones=[2, 5, 11], steps_per_epoch=SPE,
                                           gamma=0.1),
                  0.1 * 0.1 ** ((EPOCH >= 2).astype(float) + (EPOCH >= 5) + (EPOCH >= 11))),
    # linear tail: the last n epochs subtract lr0/n each epoch, ending at 0 (total 10, n 4):
    # epochs 0-6 at lr0 (6 is the first of the last four), 7: 3/4, 8: 1/2, 9: 1/4, 10+: 0.
    "linear_tail": (lambda: S.LinearDecayTail(1.0, total_epochs=10, decay_epochs=4,
                                              steps_per_epoch=SPE),
                    np.array([{6: 1.0, 7: 0.75, 8: 0.5, 9: 0.25}.get(e, 1.0 if e < 6 else 0.0)
                              for e in EPOCH])),
    "warmup_cosine": (lambda: S.WarmupCosine(1e-2, warmup_epochs=2, decay_epochs=7,
                                             steps_per_epoch=SPE, initial_learning_rate=1e-4,
                                             alpha=0.1),
                      np.array([_warmup_cosine(s, 1e-4, 1e-2, 2 * SPE, 7 * SPE, 0.1)
                                for s in STEPS])),
    "restarts": (lambda: S.CosineRestarts(0.05, first_decay_epochs=2, steps_per_epoch=SPE,
                                          t_mul=2.0, m_mul=0.5, alpha=0.01),
                 np.array([_sgdr(s, 0.05, 2 * SPE, 2.0, 0.5, 0.01) for s in STEPS])),
    "restarts_sgdr": (lambda: S.CosineRestarts(0.05, first_decay_epochs=1, steps_per_epoch=SPE,
                                               t_mul=1.5, alpha=0.1),
                      np.array([_sgdr(s, 0.05, SPE, 1.5, 1.0, 0.1) for s in STEPS])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_closed_form(name):
    make, expected = CASES[name]
    np.testing.assert_allclose(_values(make()), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_serialization_round_trip(name):
    schedule = CASES[name][0]()
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(_values(restored), CASES[name][1], rtol=1e-5, atol=1e-9)
    optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(
        keras.optimizers.SGD(schedule)))
    assert type(optimizer.learning_rate) is not float
    assert type(_compat.get_learning_rate(optimizer)) is type(schedule)


def test_linear_tail_subtracts_lr0_over_n_each_epoch():
    """The recurrence lr <- lr - lr_begin / n applied over the last n epochs (CycleGAN)."""
    lr0, total, n = 0.3, 8, 3
    schedule = S.LinearDecayTail(lr0, total, n, steps_per_epoch=1)
    lr, expected = lr0, []
    for epoch in range(total + 1):
        expected.append(lr)
        if epoch >= total - n:
            lr = lr - lr0 / n
    np.testing.assert_allclose([float(schedule(e)) for e in range(total + 1)], expected,
                               atol=1e-7)
    assert float(schedule(total)) == 0.0


def test_rate_seen_by_fit_changes_per_epoch():
    """Inside `model.fit` the optimizer applies the epoch-based rate (StepLR formula)."""
    schedule = S.StepDecay(0.1, step_size=2, steps_per_epoch=4, gamma=0.5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(schedule), "mse")
    seen = []
    cb = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(float(model.optimizer.learning_rate)))
    x = np.ones((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=2, epochs=5, verbose=0, callbacks=[cb], shuffle=False)
    expected = [0.1 * 0.5 ** (e // 2) for e in range(5) for _ in range(4)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: S.StepDecay(0.1, step_size=0, steps_per_epoch=1), "step_size"),
    (lambda: S.StepDecay(0.1, step_size=2, steps_per_epoch=1, gamma=1.5), "gamma"),
    (lambda: S.ExponentialDecay(-1.0, steps_per_epoch=1, gamma=0.5), "initial_learning_rate"),
    (lambda: S.MultiStepDecay(0.1, milestones=[5, 3], steps_per_epoch=1), r"milestones=\[5, 3\]"),
    (lambda: S.MultiStepDecay(0.1, milestones=[], steps_per_epoch=1), "milestones"),
    (lambda: S.LinearDecayTail(0.1, total_epochs=5, decay_epochs=6, steps_per_epoch=1),
     "decay_epochs=6"),
    (lambda: S.WarmupCosine(0.1, warmup_epochs=-1, decay_epochs=5, steps_per_epoch=1),
     "warmup_epochs"),
    (lambda: S.CosineRestarts(0.1, first_decay_epochs=2, steps_per_epoch=2.5),
     "steps_per_epoch=2.5"),
    (lambda: S.CosineRestarts(0.1, first_decay_epochs=2, steps_per_epoch=2, alpha=2),
     "alpha"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
