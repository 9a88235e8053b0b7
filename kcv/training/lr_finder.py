"""The learning-rate range test: raise the rate every batch, record the loss, read the rate off.

The range test of Smith ("Cyclical Learning Rates for Training Neural Networks", WACV 2017,
section 3.3), with the exponential sweep of fastai's `lr_find`: start from a very small rate,
update the network after every batch while the rate grows exponentially, record each batch's
loss and plot loss against rate; the loss falls slowly at tiny rates, fast at good ones and
blows up when the rate is too large. It works in one run because the small early updates barely
move the weights, so each point is, approximately, a step from the initial weights at that rate.
"""

import math
import os

import keras
import numpy as np
import tensorflow as tf

from kcv import _compat


def _check_number(value, name, low=None, high=None, low_open=True):
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bounds = f" in ({low}, {high})" if high is not None else (
            f" > {low}" if low_open else f" >= {low}")
        raise ValueError(f"`{name}` must be a finite number{bounds}. Received: {name}={value!r}")


def smooth_losses(losses, smoothing=0.98):
    """Exponential moving average of `losses` with bias correction.

    Formula: `avg_i = smoothing * avg_{i-1} + (1 - smoothing) * loss_i` (`avg_{-1} = 0`) and
    `smoothed_i = avg_i / (1 - smoothing ** (i + 1))`, so early points are not pulled to 0.

    Args:
        losses: 1-D sequence of losses.
        smoothing: the averaging factor `beta` in [0, 1); 0 returns the losses unchanged.

    Returns:
        float64 NumPy array, same length as `losses`.

    Reference:
        Kingma & Ba, "Adam", ICLR 2015 (bias correction of moving averages).
    """
    _check_number(smoothing, "smoothing", 0, 1, low_open=False)
    out, avg = [], 0.0
    for i, loss in enumerate(np.asarray(losses, np.float64)):
        avg = smoothing * avg + (1.0 - smoothing) * loss
        out.append(avg / (1.0 - smoothing ** (i + 1)))
    return np.asarray(out, np.float64)


def suggest_lr(learning_rates, smoothed_losses):
    """Suggested rates from a range-test curve.

    `steepest`: the rate where the smoothed loss falls fastest against `log10(rate)` (the most
    negative `np.gradient`), looked for before the curve's minimum; `minimum_over_10`: the
    rate of the minimum smoothed loss divided by 10.

    Args:
        learning_rates: increasing rates of the sweep.
        smoothed_losses: the smoothed loss at each rate.

    Returns:
        `{"steepest": float, "minimum_over_10": float}`. With fewer than 3 points before the
        minimum, `steepest` falls back to `minimum_over_10`.

    Reference:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017; fastai's
        `lr_find` suggestions.
    """
    lrs = np.asarray(learning_rates, np.float64)
    losses = np.asarray(smoothed_losses, np.float64)
    if lrs.ndim != 1 or lrs.shape != losses.shape or lrs.size == 0:
        raise ValueError("`learning_rates` and `smoothed_losses` must be 1-D of the same "
                         f"non-zero length. Received shapes {lrs.shape} and {losses.shape}")
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError("No finite loss in the curve: the sweep diverged from the start. "
                         "Lower `start_lr`.")
    i_min = int(np.argmin(np.where(finite, losses, np.inf)))
    minimum_over_10 = float(lrs[i_min] / 10.0)
    if i_min < 2:
        return {"steepest": minimum_over_10, "minimum_over_10": minimum_over_10}
    slope = np.gradient(losses[:i_min + 1], np.log10(lrs[:i_min + 1]))
    return {"steepest": float(lrs[int(np.argmin(slope))]), "minimum_over_10": minimum_over_10}


class _Sweep(keras.optimizers.schedules.LearningRateSchedule):
    """`start_lr * (end_lr / start_lr) ** ((step - offset) / (num_steps - 1))`."""

    def __init__(self, start_lr, end_lr, num_steps, offset):
        self.start_lr, self.end_lr = float(start_lr), float(end_lr)
        self.num_steps, self.offset = num_steps, int(offset)

    def __call__(self, step):
        i = tf.cast(step, tf.float32) - float(self.offset)
        ratio = math.log(self.end_lr / self.start_lr) / max(self.num_steps - 1, 1)
        return self.start_lr * tf.exp(i * ratio)

    def get_config(self):
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "num_steps": self.num_steps,
                "offset": self.offset}


class LRFinder(keras.callbacks.Callback):
    """Learning-rate range test as a Keras callback.

    During `fit`, the rate of batch `i` is `start_lr * (end_lr / start_lr) ** (i / (num_steps -
    1))`, each batch's loss is recorded and smoothed (`smooth_losses`), and training stops after
    `num_steps` batches or as soon as the smoothed loss exceeds `divergence_threshold` times its
    minimum (or is not finite). When training ends the model's weights (trainable and not),
    the optimizer's variables (moments, iteration count, loss scale) and the optimizer's
    learning rate (a float or a `LearningRateSchedule`) are put back as they were, so the model
    can be trained from where it was.

    Metrics are reset before every batch so that the logged loss is that batch's loss (Keras
    logs running means); `steps_per_execution` must be 1.

    Attributes (after the run):
        learning_rates, losses, smoothed_losses: the curve (NumPy arrays).
        suggestions: `suggest_lr(...)`, `{"steepest": ..., "minimum_over_10": ...}`.
        suggested_lr: `suggestions["steepest"]`.
        stopped_early: True when the sweep stopped because the loss diverged.

    Args:
        start_lr: rate of the first batch (> 0).
        end_lr: rate of batch `num_steps - 1` (> start_lr).
        num_steps: batches in the sweep (>= 2).
        smoothing: moving-average factor of the loss, in [0, 1).
        divergence_threshold: stop when smoothed loss > threshold * minimum smoothed loss.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> x = np.random.default_rng(0).random((32, 4), "float32")
        >>> train = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(8)
        >>> finder = LRFinder(1e-4, 1.0, num_steps=20)
        >>> _ = model.fit(train.repeat(), steps_per_epoch=20, epochs=1, callbacks=[finder],
        ...               shuffle=False, verbose=0)
        >>> 1e-4 <= finder.suggested_lr <= 1.0, finder.plot("lr_find.png")
        (True, 'lr_find.png')

    Reference:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, section 3.3.
    """

    def __init__(self, start_lr=1e-7, end_lr=10.0, num_steps=100, smoothing=0.98,
                 divergence_threshold=4.0):
        super().__init__()
        _check_number(start_lr, "start_lr", 0)
        _check_number(end_lr, "end_lr", 0)
        if end_lr <= start_lr:
            raise ValueError("`end_lr` must be larger than `start_lr`. Received: "
                             f"start_lr={start_lr}, end_lr={end_lr}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"`num_steps` must be an int >= 2. Received: num_steps={num_steps!r}")
        _check_number(smoothing, "smoothing", 0, 1, low_open=False)
        _check_number(divergence_threshold, "divergence_threshold", 1)
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, num_steps
        self.smoothing, self.divergence_threshold = smoothing, divergence_threshold
        self._reset_curve()

    def _reset_curve(self):
        self.learning_rates = np.zeros((0,))
        self.losses = np.zeros((0,))
        self.smoothed_losses = np.zeros((0,))
        self.suggestions = None
        self.suggested_lr = None
        self.stopped_early = False

    def _inner_optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("LRFinder needs a compiled model (`model.compile(optimizer, loss)`).")
        return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps one

    def on_train_begin(self, logs=None):
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise ValueError("LRFinder needs `steps_per_execution=1` to see every batch. "
                             f"Received: steps_per_execution={self.model.steps_per_execution}")
        self._reset_curve()
        self._lrs, self._losses, self._avg, self._best = [], [], 0.0, math.inf
        optimizer = self.model.optimizer
        inner = self._inner_optimizer()
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._saved_weights = [np.array(w) for w in self.model.get_weights()]
        self._saved_optimizer = [np.array(v) for v in optimizer.variables]
        # The public setter cannot put a variable back once a schedule replaced it, so the sweep
        # swaps the rate object itself and restores the very same one (kcv/_compat.py).
        self._saved_lr = _compat.get_learning_rate(inner)
        self._offset = int(np.array(optimizer.iterations))
        _compat.set_learning_rate(
            inner, _Sweep(self.start_lr, self.end_lr, self.num_steps, self._offset))
        # A train function traced by an earlier fit would still read the old rate.
        self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        self.model.reset_metrics()  # Keras logs running means; this makes it the batch loss

    def on_train_batch_end(self, batch, logs=None):
        i = len(self._losses)
        loss = float((logs or {}).get("loss", math.nan))
        self._lrs.append(self.start_lr * (self.end_lr / self.start_lr) ** (i / (self.num_steps - 1)))
        self._losses.append(loss)
        self._avg = self.smoothing * self._avg + (1.0 - self.smoothing) * loss
        smoothed = self._avg / (1.0 - self.smoothing ** (i + 1))
        self._best = min(self._best, smoothed) if math.isfinite(smoothed) else self._best
        if not math.isfinite(smoothed) or smoothed > self.divergence_threshold * self._best:
            self.stopped_early = True
            self.model.stop_training = True
        elif i + 1 >= self.num_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        _compat.set_learning_rate(self._inner_optimizer(), self._saved_lr)
        self.model.set_weights(self._saved_weights)
        for variable, value in zip(self.model.optimizer.variables, self._saved_optimizer):
            variable.assign(value)
        self.model.train_function = None  # the next fit traces again, with the restored rate
        self.model.reset_metrics()
        self.learning_rates = np.asarray(self._lrs, np.float64)
        self.losses = np.asarray(self._losses, np.float64)
        self.smoothed_losses = smooth_losses(self.losses, self.smoothing)
        if self.losses.size:
            self.suggestions = suggest_lr(self.learning_rates, self.smoothed_losses)
            self.suggested_lr = self.suggestions["steepest"]

    def plot(self, path, title="Learning-rate range test"):
        """Saves a PNG of loss against learning rate (log axis) with the suggestions marked.

        Args:
            path: output file (`.png`); its folder is created if missing.
            title: figure title.

        Returns:
            `path`.
        """
        if self.suggestions is None:
            raise ValueError("Nothing to plot: run the range test first (`find_lr` or `fit` "
                             "with this callback).")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(self.learning_rates, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.learning_rates, self.smoothed_losses, color="C0", lw=2, label="smoothed")
        for (name, lr), color in zip(self.suggestions.items(), ("C3", "C2")):
            y = np.interp(np.log(lr), np.log(self.learning_rates), self.smoothed_losses)
            ax.plot([lr], [y], "o", color=color, label=f"{name.replace('_', ' ')}: {lr:.2e}")
        finite = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        if finite.size:
            low, first = float(finite.min()), float(finite[0])
            ax.set_ylim(low - 0.1 * abs(low), max(first, low) + 0.5 * abs(max(first, low) - low)
                        + 1e-8)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def find_lr(model, dataset, start_lr=1e-7, end_lr=10.0, num_steps=100, smoothing=0.98,
            divergence_threshold=4.0, verbose=0):
    """Runs the learning-rate range test on a compiled model and puts the model back.

    Args:
        model: a compiled `keras.Model` (its optimizer may hold a float or a
            `LearningRateSchedule`; mixed precision's `LossScaleOptimizer` is fine).
        dataset: a `tf.data.Dataset` of `(x, y)` batches (repeated here as needed), or anything
            `model.fit` accepts that yields at least `num_steps` batches.
        start_lr, end_lr, num_steps, smoothing, divergence_threshold: see `LRFinder`.
        verbose: passed to `model.fit`.

    Returns:
        The `LRFinder` holding `learning_rates`, `losses`, `smoothed_losses`, `suggestions`,
        `suggested_lr` and `plot(path)`.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> x = np.random.default_rng(0).random((32, 4), "float32")
        >>> train_ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(8)
        >>> finder = find_lr(model, train_ds, start_lr=1e-4, end_lr=1.0, num_steps=20)
        >>> sorted(finder.suggestions)
        ['minimum_over_10', 'steepest']
        >>> finder.plot("lr_find.png")
        'lr_find.png'

    Reference:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    finder = LRFinder(start_lr, end_lr, num_steps, smoothing, divergence_threshold)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={type(model).__name__}")
    if isinstance(dataset, tf.data.Dataset):
        dataset = dataset.repeat()
    model.fit(dataset, epochs=1, steps_per_epoch=num_steps, callbacks=[finder], verbose=verbose,
              shuffle=False)
    return finder
