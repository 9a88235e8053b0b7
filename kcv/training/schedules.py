"""Learning-rate schedules counted in epochs, as serializable `LearningRateSchedule`s.

A Keras optimizer calls its schedule with the number of updates done so far (`iterations`).
The schedules here take their lengths in epochs and a `steps_per_epoch`, and turn the update
count into an epoch with `epoch = floor(step / steps_per_epoch)` where the PyTorch
scheduler they mirror changes the rate once per epoch (`StepDecay`, `MultiStepDecay`, `ExponentialDecay`,
`LinearDecayTail`). `WarmupCosine` and `CosineRestarts` change the rate at every update, with
their lengths given in epochs. Where Keras already has exactly the rule (`ExponentialDecay` with
`staircase=True`, `CosineDecay` with warmup, `CosineDecayRestarts`) the class is a thin subclass
that only converts epochs to steps; its config holds the epoch-based arguments.

All schedules are registered under the package `kcv`, so an optimizer holding one survives
`keras.optimizers.serialize`/`deserialize` and a `.keras` save.

Reduce-on-plateau depends on a monitored metric, not on the step: use
`keras.callbacks.ReduceLROnPlateau` with a float learning rate.
"""

import keras
import tensorflow as tf

_schedules = keras.optimizers.schedules


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def _non_negative_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int. Received: {name}={value!r}")


def _positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def _factor(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"`{name}` must be in (0, 1]. Received: {name}={value!r}")


def _epoch(step, steps_per_epoch):
    """`floor(step / steps_per_epoch)` as float32."""
    step = tf.cast(step, tf.float32)
    return tf.floor(step / float(steps_per_epoch))


@keras.saving.register_keras_serializable(package="kcv")
class StepDecay(_schedules.ExponentialDecay):
    """Multiplies the rate by `gamma` every `step_size` epochs (PyTorch's `StepLR`).

    Formula: `lr = initial_learning_rate * gamma ** floor(epoch / step_size)`, with
    `epoch = floor(step / steps_per_epoch)`. This is Keras' `ExponentialDecay` with
    `decay_steps = step_size * steps_per_epoch` and `staircase=True`.

    Args:
        initial_learning_rate: rate of the first `step_size` epochs.
        step_size: epochs between two decays.
        steps_per_epoch: optimizer updates per epoch (batches per epoch).
        gamma: factor applied at each decay, in (0, 1].

    Example:
        >>> schedule = StepDecay(0.1, step_size=30, steps_per_epoch=100, gamma=0.1)
        >>> optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
        >>> [round(float(schedule(step)), 6) for step in (0, 2999, 3000)]  # epochs 0, 29, 30
        [0.1, 0.1, 0.01]

    Reference:
        PyTorch `torch.optim.lr_scheduler.StepLR`.
    """

    def __init__(self, initial_learning_rate, step_size, steps_per_epoch, gamma=0.1):
        _positive_number(initial_learning_rate, "initial_learning_rate")
        _positive_int(step_size, "step_size")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        _factor(gamma, "gamma")
        super().__init__(initial_learning_rate, decay_steps=step_size * steps_per_epoch,
                         decay_rate=gamma, staircase=True, name="StepDecay")
        self.step_size = step_size
        self.steps_per_epoch = steps_per_epoch
        self.gamma = gamma

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "step_size": self.step_size, "steps_per_epoch": self.steps_per_epoch,
                "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="kcv")
class ExponentialDecay(_schedules.ExponentialDecay):
    """Multiplies the rate by `gamma` after every epoch (PyTorch's `ExponentialLR`).

    Formula: `lr = initial_learning_rate * gamma ** epoch`, with
    `epoch = floor(step / steps_per_epoch)`: Keras' `ExponentialDecay` with
    `decay_steps = steps_per_epoch` and `staircase=True`.

    Args:
        initial_learning_rate: rate of the first epoch.
        steps_per_epoch: optimizer updates per epoch.
        gamma: factor applied after each epoch, in (0, 1].

    Example:
        >>> schedule = ExponentialDecay(2e-4, steps_per_epoch=50, gamma=0.95)
        >>> [round(float(schedule(step)), 7) for step in (49, 50, 100)]  # epochs 0, 1, 2
        [0.0002, 0.00019, 0.0001805]

    Reference:
        PyTorch `torch.optim.lr_scheduler.ExponentialLR`.
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, gamma):
        _positive_number(initial_learning_rate, "initial_learning_rate")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        _factor(gamma, "gamma")
        super().__init__(initial_learning_rate, decay_steps=steps_per_epoch, decay_rate=gamma,
                         staircase=True, name="ExponentialDecay")
        self.steps_per_epoch = steps_per_epoch
        self.gamma = gamma

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "steps_per_epoch": self.steps_per_epoch, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="kcv")
class MultiStepDecay(_schedules.LearningRateSchedule):
    """Multiplies the rate by `gamma` at each milestone epoch (PyTorch's `MultiStepLR`).

    Formula: `lr = initial_learning_rate * gamma ** (number of milestones <= epoch)`, with
    `epoch = floor(step / steps_per_epoch)`; milestone `m` means epoch `m` (0-based) is the
    first to use the reduced rate. (Keras' `PiecewiseConstantDecay` switches one step later,
    after the boundary, so it is not reused.)

    Args:
        initial_learning_rate: rate before the first milestone.
        milestones: increasing positive epoch numbers.
        steps_per_epoch: optimizer updates per epoch.
        gamma: factor applied at each milestone, in (0, 1].

    Example:
        >>> schedule = MultiStepDecay(0.1, milestones=[30, 80], steps_per_epoch=100)
        >>> [round(float(schedule(epoch * 100)), 6) for epoch in (29, 30, 80)]
        [0.1, 0.01, 0.001]

    Reference:
        PyTorch `torch.optim.lr_scheduler.MultiStepLR`.
    """

    def __init__(self, initial_learning_rate, milestones, steps_per_epoch, gamma=0.1):
        _positive_number(initial_learning_rate, "initial_learning_rate")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        _factor(gamma, "gamma")
        milestones = list(milestones) if isinstance(milestones, (list, tuple)) else milestones
        if (not isinstance(milestones, list) or not milestones
                or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)
                or any(b <= a for a, b in zip(milestones, milestones[1:]))):
            raise ValueError("`milestones` must be a non-empty list of strictly increasing "
                             f"positive ints. Received: milestones={milestones!r}")
        self.initial_learning_rate = initial_learning_rate
        self.milestones = milestones
        self.steps_per_epoch = steps_per_epoch
        self.gamma = gamma

    def __call__(self, step):
        with tf.name_scope("MultiStepDecay"):
            epoch = _epoch(step, self.steps_per_epoch)
            passed = tf.reduce_sum(tf.cast(
                tf.constant(self.milestones, tf.float32) <= epoch, tf.float32))
            return self.initial_learning_rate * tf.pow(tf.constant(self.gamma, tf.float32),
                                                       passed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "milestones": list(self.milestones), "steps_per_epoch": self.steps_per_epoch,
                "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="kcv")
class LinearDecayTail(_schedules.LearningRateSchedule):
    """Constant rate, then a linear decay to 0 over the last `decay_epochs` epochs.

    The rule: during the last `n = decay_epochs` epochs the rate drops by
    `initial_learning_rate / n` after each epoch, reaching 0 when training ends. With the
    scheduler stepped at the end of each epoch (as PyTorch's are), the rate used during epoch
    `e` is `initial_learning_rate * min(1, (total_epochs - e) / n)`, clipped at 0: the first
    of the last n epochs still trains at the full rate, the last one at `initial_learning_rate
    / n`, and `epoch = floor(step / steps_per_epoch)`.

    Args:
        initial_learning_rate: the constant rate before the decay.
        total_epochs: the number of epochs training runs for.
        decay_epochs: `n`, the epochs at the end over which the rate falls to 0
            (`1 <= n <= total_epochs`).
        steps_per_epoch: optimizer updates per epoch.

    Example:
        >>> schedule = LinearDecayTail(1e-3, total_epochs=100, decay_epochs=20, steps_per_epoch=50)
        >>> [round(float(schedule(epoch * 50)), 6) for epoch in (80, 81, 99)]
        [0.001, 0.00095, 5e-05]

    Reference:
        Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
        Networks" (CycleGAN), ICCV 2017: a constant rate, then a linear decay to zero over the
        last epochs (the `linear` policy of the pix2pix/CycleGAN code).
    """

    def __init__(self, initial_learning_rate, total_epochs, decay_epochs, steps_per_epoch):
        _positive_number(initial_learning_rate, "initial_learning_rate")
        _positive_int(total_epochs, "total_epochs")
        _positive_int(decay_epochs, "decay_epochs")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        if decay_epochs > total_epochs:
            raise ValueError("`decay_epochs` must be <= `total_epochs`. Received: "
                             f"decay_epochs={decay_epochs}, total_epochs={total_epochs}")
        self.initial_learning_rate = initial_learning_rate
        self.total_epochs = total_epochs
        self.decay_epochs = decay_epochs
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step):
        with tf.name_scope("LinearDecayTail"):
            epoch = _epoch(step, self.steps_per_epoch)
            fraction = (float(self.total_epochs) - epoch) / float(self.decay_epochs)
            return self.initial_learning_rate * tf.clip_by_value(fraction, 0.0, 1.0)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "total_epochs": self.total_epochs, "decay_epochs": self.decay_epochs,
                "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable(package="kcv")
class WarmupCosine(_schedules.CosineDecay):
    """Linear warmup to a peak rate, then cosine annealing (updated every step).

    Formula (`s` = step, `W = warmup_epochs * steps_per_epoch`,
    `D = decay_epochs * steps_per_epoch`):
    for `s < W`: `lr = initial_learning_rate + (peak_learning_rate - initial_learning_rate) * s / W`;
    afterwards, with `t = min(s - W, D)`:
    `lr = peak_learning_rate * (alpha + (1 - alpha) * 0.5 * (1 + cos(pi * t / D)))`.
    This is Keras' `CosineDecay` with `warmup_target` (it is reused, not rewritten).

    Args:
        peak_learning_rate: rate at the end of the warmup.
        warmup_epochs: epochs of linear warmup (0 for none).
        decay_epochs: epochs of cosine decay after the warmup.
        steps_per_epoch: optimizer updates per epoch.
        initial_learning_rate: rate at step 0 (start of the warmup).
        alpha: final rate as a fraction of `peak_learning_rate`.

    Example:
        >>> schedule = WarmupCosine(1e-3, warmup_epochs=2, decay_epochs=48, steps_per_epoch=100)
        >>> [round(float(schedule(step)), 6) for step in (0, 100, 200, 2600, 5000)]
        [0.0, 0.0005, 0.001, 0.0005, 0.0]

    Reference:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017;
        Goyal et al., "Accurate, Large Minibatch SGD", 2017 (warmup).
    """

    def __init__(self, peak_learning_rate, warmup_epochs, decay_epochs, steps_per_epoch,
                 initial_learning_rate=0.0, alpha=0.0):
        _positive_number(peak_learning_rate, "peak_learning_rate")
        _non_negative_int(warmup_epochs, "warmup_epochs")
        _positive_int(decay_epochs, "decay_epochs")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        if isinstance(initial_learning_rate, bool) or not isinstance(
                initial_learning_rate, (int, float)) or initial_learning_rate < 0:
            raise ValueError("`initial_learning_rate` must be a non-negative number. Received: "
                             f"initial_learning_rate={initial_learning_rate!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha!r}")
        super().__init__(initial_learning_rate, decay_steps=decay_epochs * steps_per_epoch,
                         alpha=alpha, name="WarmupCosine", warmup_target=peak_learning_rate,
                         warmup_steps=warmup_epochs * steps_per_epoch)
        self.peak_learning_rate = peak_learning_rate
        self.warmup_epochs = warmup_epochs
        self.decay_epochs = decay_epochs
        self.steps_per_epoch = steps_per_epoch

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "warmup_epochs": self.warmup_epochs, "decay_epochs": self.decay_epochs,
                "steps_per_epoch": self.steps_per_epoch,
                "initial_learning_rate": self.initial_learning_rate, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="kcv")
class CosineRestarts(_schedules.CosineDecayRestarts):
    """Cosine annealing with warm restarts (SGDR), periods given in epochs.

    Formula: period `i` lasts `T_i = first_decay_epochs * steps_per_epoch * t_mul ** i` steps;
    at `t` steps from its start,
    `lr = initial_learning_rate * (alpha + (1 - alpha) * m_mul ** i * 0.5 * (1 + cos(pi * t / T_i)))`,
    so every period starts at `initial_learning_rate * (alpha + (1 - alpha) * m_mul ** i)` and
    falls to the same floor `alpha * initial_learning_rate`. With `m_mul=1` this is SGDR's
    `eta_min + (eta_max - eta_min) * 0.5 * (1 + cos(pi * T_cur / T_i))`.
    This is Keras' `CosineDecayRestarts` (reused).

    Args:
        initial_learning_rate: rate at the start of the first period.
        first_decay_epochs: length of the first period in epochs.
        steps_per_epoch: optimizer updates per epoch.
        t_mul: factor between the lengths of consecutive periods.
        m_mul: factor between the starting rates of consecutive periods.
        alpha: minimum rate as a fraction of `initial_learning_rate`.

    Example:
        >>> schedule = CosineRestarts(0.05, first_decay_epochs=10, steps_per_epoch=100)
        >>> [round(float(schedule(step)), 6) for step in (0, 500, 1000, 2000)]  # restart at 1000
        [0.05, 0.025, 0.05, 0.025]

    Reference:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    def __init__(self, initial_learning_rate, first_decay_epochs, steps_per_epoch, t_mul=2.0,
                 m_mul=1.0, alpha=0.0):
        _positive_number(initial_learning_rate, "initial_learning_rate")
        _positive_int(first_decay_epochs, "first_decay_epochs")
        _positive_int(steps_per_epoch, "steps_per_epoch")
        _positive_number(t_mul, "t_mul")
        _positive_number(m_mul, "m_mul")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha!r}")
        super().__init__(initial_learning_rate, first_decay_steps=first_decay_epochs
                         * steps_per_epoch, t_mul=t_mul, m_mul=m_mul, alpha=alpha,
                         name="CosineRestarts")
        self.first_decay_epochs = first_decay_epochs
        self.steps_per_epoch = steps_per_epoch
        self.t_mul = t_mul
        self.m_mul = m_mul

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_epochs": self.first_decay_epochs,
                "steps_per_epoch": self.steps_per_epoch, "t_mul": self.t_mul,
                "m_mul": self.m_mul, "alpha": self.alpha}


__all__ = ["StepDecay", "ExponentialDecay", "MultiStepDecay", "LinearDecayTail", "WarmupCosine",
           "CosineRestarts"]
