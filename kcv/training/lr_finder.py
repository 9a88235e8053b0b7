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
import textwrap

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


def _smoothing_weights(i, smoothing):
    """Weights of `losses[0..i]` in `smooth_losses(losses, smoothing)[i]`."""
    w = (1.0 - smoothing) * smoothing ** np.arange(i, -1, -1, dtype=np.float64)
    return w / w.sum()


def suggest_lr(learning_rates, losses, smoothing=0.0, skip_start=None, min_significance=5.0):
    """Suggested learning rate from a range-test curve, and whether the curve answers clearly.

    The rule (Smith, 2017, section 3.3: pick the rate where the loss falls fastest; fastai's
    `lr_find`: skip the first steps, steepest descent of the smoothed loss, minimum / 10):

    1. Smooth the losses (`smooth_losses(losses, smoothing)`; `smoothing=0` takes them as they
       are); leave out the first `skip_start` points, where the bias-corrected average still
       rests on a few batches and is as noisy as they are, and everything from the first
       non-finite loss on (the sweep diverged there).
    2. The *descent* runs from the highest smoothed loss before the curve's minimum to the
       minimum. `steepest` is the rate of the most negative slope of the smoothed loss against
       `log10(rate)` strictly inside the descent, each slope taken over `len(losses) // 20`
       points (at least 1) either side, clipped to the descent, so that one noisy batch does
       not make a slope.
    3. The descent is *clear* when it spans at least 3 points, its fall is at least 1% of
       the loss and more than `min_significance` standard errors of the smoothed loss (the
       batch-to-batch noise, estimated robustly from second differences of the raw losses
       before the minimum and carried through the moving average's weights), and the loss is
       not still falling at the end of the sweep (minimum at the last step with a slope there
       over half the steepest: the steepest descent may lie beyond `end_lr`). Then the
       suggestion is `steepest`.
    4. Otherwise the curve gives no clear answer (`confident=False`, `reason` says why) and
       the suggestion falls back to the recorded rate nearest `minimum_over_10` (the rate of
       the minimum smoothed loss divided by 10), or, when the loss is still falling at the
       end, to `steepest` (minimum / 10 would then be `end_lr / 10` whatever the curve).

    The suggestion is always one of `learning_rates` other than the first and the last, so it
    is never the sweep's own boundary.

    Args:
        learning_rates: increasing rates of the sweep, 1-D, at least 3.
        losses: the loss at each rate, raw (with `smoothing` > 0) or already smoothed (with
            `smoothing=0`, the default; the noise estimate then sees only what is left).
        smoothing: moving-average factor in [0, 1), as in `smooth_losses`.
        skip_start: points left out at the start; default `max(1, len(losses) // 10)`.
        min_significance: how many standard errors the descent must fall by (> 0).

    Returns:
        A dict: `suggested` (float, the rate to use), `steepest` (float, or None without a
        descent), `minimum_over_10` (float), `confident` (bool) and `reason` (str).

    Example:
        >>> lrs = np.logspace(-6, 1, 60)
        >>> out = suggest_lr(lrs, -np.tanh(2 * (np.log10(lrs) + 2)))  # steepest at 1e-2
        >>> f"{out['suggested']:.2g}", out["confident"]
        ('0.011', True)

    Reference:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017; Howard &
        Gugger, "Fastai: A Layered API for Deep Learning", Information 2020 (`lr_find`).
    """
    lrs = np.asarray(learning_rates, np.float64)
    raw = np.asarray(losses, np.float64)
    if lrs.ndim != 1 or lrs.shape != raw.shape or lrs.size < 3:
        raise ValueError("`learning_rates` and `losses` must be 1-D of the same length >= 3. "
                         f"Received shapes {lrs.shape} and {raw.shape}")
    _check_number(smoothing, "smoothing", 0, 1, low_open=False)
    _check_number(min_significance, "min_significance", 0)
    n = lrs.size
    if skip_start is None:
        skip_start = max(1, n // 10)
    if isinstance(skip_start, bool) or not isinstance(skip_start, int) or skip_start < 0:
        raise ValueError(f"`skip_start` must be an int >= 0. Received: skip_start={skip_start!r}")
    smoothed = smooth_losses(raw, smoothing)
    # The curve ends at its first non-finite loss: the sweep diverged there.
    end = int(np.argmin(np.isfinite(smoothed))) if not np.isfinite(smoothed).all() else n
    if end == 0:
        raise ValueError("No finite loss in the curve: the sweep diverged from the start. "
                         "Lower `start_lr`.")
    first = skip_start if skip_start < end else 0
    i_min = first + int(np.argmin(smoothed[first:end]))
    i_top = first + int(np.argmax(smoothed[first:i_min + 1]))
    minimum_over_10 = float(lrs[i_min] / 10.0)
    log_lrs = np.log10(lrs)

    steepest, doubt, still_falling = None, None, False
    if i_min - i_top < 2:
        doubt = (f"the smoothed loss does not fall before its minimum at {lrs[i_min]:.2e}; "
                 "lower `start_lr` or check the model and data")
    else:
        inside, half = np.arange(i_top + 1, i_min), max(1, n // 20)
        ahead, behind = np.minimum(inside + half, i_min), np.maximum(inside - half, i_top)
        slope = (smoothed[ahead] - smoothed[behind]) / (log_lrs[ahead] - log_lrs[behind])
        steepest = float(lrs[inside[np.argmin(slope)]])
        fall = float(smoothed[i_top] - smoothed[i_min])
        std_error = _fall_std_error(raw[:i_min + 1], i_top, smoothing)
        if fall <= 0.01 * abs(float(smoothed[i_top])):
            doubt = (f"the smoothed loss falls by only {fall:.3g}, under 1% of its level "
                     f"{smoothed[i_top]:.3g}")
        elif fall <= min_significance * std_error:
            doubt = (f"the smoothed loss falls by {fall:.3g}, less than {min_significance:g} "
                     f"standard errors ({std_error:.3g}) of its noise")
        elif i_min == n - 1 and slope[-1] <= 0.5 * slope.min():
            still_falling = True
            doubt = ("the smoothed loss still falls at the end of the sweep at more than half "
                     "its steepest slope; raise `end_lr`")
    if doubt is None:
        size = f"{fall / std_error:.3g} standard errors" if std_error > 0 else "no noise"
        return {"suggested": steepest, "steepest": steepest, "minimum_over_10": minimum_over_10,
                "confident": True,
                "reason": (f"steepest descent of the smoothed loss, which falls by {fall:.3g} "
                           f"({size}) to its minimum at {lrs[i_min]:.2e}")}
    if still_falling:  # minimum / 10 would be end_lr / 10, whatever the curve
        suggested, source = steepest, "the steepest descent so far"
    else:
        inner = np.arange(1, n - 1)  # boundaries excluded
        suggested = float(lrs[inner[np.argmin(np.abs(log_lrs[inner] - log_lrs[i_min] + 1))]])
        source = "the rate nearest minimum / 10"
    return {"suggested": suggested, "steepest": steepest, "minimum_over_10": minimum_over_10,
            "confident": False,
            "reason": f"no clear answer: {doubt}; suggesting {source}, {suggested:.2e}"}


def _fall_std_error(raw, i_top, smoothing):
    """Standard error of `smoothed[i_top] - smoothed[-1]` for noise of the size in `raw`.

    The noise is estimated robustly from second differences (which cancel a linear trend) of
    the raw losses, `1.4826 * median(|d2|) / sqrt(6)`, and propagated through the weights of
    the bias-corrected moving average.
    """
    d2 = np.diff(raw, 2)
    noise = 1.4826 * float(np.median(np.abs(d2))) / math.sqrt(6) if d2.size else 0.0
    gap = -_smoothing_weights(raw.size - 1, smoothing)
    gap[:i_top + 1] += _smoothing_weights(i_top, smoothing)
    return noise * float(np.linalg.norm(gap))


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
        suggestions: `suggest_lr(learning_rates, losses, smoothing)`: a dict with `suggested`,
            `steepest`, `minimum_over_10`, `confident`, `reason` (None with < 3 steps).
        suggested_lr: `suggestions["suggested"]`: the steepest descent of the smoothed loss
            when the curve answers clearly, else the recorded rate nearest minimum / 10; never
            the first or last rate of the sweep (None with < 3 steps).
        confident: False when the curve gives no clear answer (flat, too noisy, no descent,
            still falling at the end, or too short); then check the plot.
        reason: why, in words (also in `repr(finder)` and the plot's title).
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
        >>> finder  # doctest: +ELLIPSIS
        LRFinder(start_lr=0.0001, end_lr=1, num_steps=20): ... steps..., suggested_lr=..., confident=...
        >>> finder.plot("lr_find.png")
        'lr_find.png'

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
        self.confident = None
        self.reason = None
        self.stopped_early = False

    def __repr__(self):
        head = (f"LRFinder(start_lr={self.start_lr:g}, end_lr={self.end_lr:g}, "
                f"num_steps={self.num_steps})")
        if self.reason is None:
            return f"{head}: not run yet"
        lr = "None" if self.suggested_lr is None else f"{self.suggested_lr:.3g}"
        diverged = " (stopped early: the loss diverged)" if self.stopped_early else ""
        return (f"{head}: {len(self.losses)} steps{diverged}, suggested_lr={lr}, "
                f"confident={self.confident}: {self.reason}")

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
        if self.losses.size >= 3:
            self.suggestions = suggest_lr(self.learning_rates, self.losses, self.smoothing)
            self.suggested_lr = self.suggestions["suggested"]
            self.confident, self.reason = self.suggestions["confident"], self.suggestions["reason"]
        else:
            self.confident = False
            self.reason = (f"no clear answer: only {self.losses.size} step(s) recorded; "
                           "lower `start_lr` or raise `num_steps`")

    def plot(self, path, title="Learning-rate range test"):
        """Saves a PNG of loss against learning rate (log axis) with the suggestions marked.

        Args:
            path: output file (`.png`); its folder is created if missing.
            title: figure title; the suggested rate is added below it, and the reason when
                the curve gives no clear answer.

        Returns:
            `path`.
        """
        if self.reason is None:
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
        marks = dict(self.suggestions or {})
        if marks.get("steepest") == marks.get("suggested"):
            marks["steepest"] = None
        for name, color in (("suggested", "C3"), ("steepest", "C1"), ("minimum_over_10", "C2")):
            lr = marks.get(name)
            if lr is not None and self.learning_rates[0] <= lr <= self.learning_rates[-1]:
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
        ax.set_title(self._title(title), fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def _title(self, title):
        lr = "none" if self.suggested_lr is None else f"{self.suggested_lr:.2e}"
        if self.confident:
            return f"{title}\nsuggested learning rate {lr}"
        return "\n".join([title, f"suggested learning rate {lr} (no clear answer)",
                          *textwrap.wrap(self.reason.removeprefix("no clear answer: "), 70)])


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
        `suggested_lr`, `confident`, `reason` (see `suggest_lr`) and `plot(path)`.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> x = np.random.default_rng(0).random((32, 4), "float32")
        >>> train_ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(8)
        >>> finder = find_lr(model, train_ds, start_lr=1e-4, end_lr=1.0, num_steps=20)
        >>> finder.suggested_lr > 0, type(finder.confident).__name__, type(finder.reason).__name__
        (True, 'bool', 'str')
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
