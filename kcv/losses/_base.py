"""The one class pattern of kcv's losses, and the argument checks they share.

Every kcv loss is a function (one value per sample, or per element for the element-wise box and
sigmoid focal losses) plus a `keras.losses.Loss` subclass of `ArgumentLoss` that stores the
function's keyword arguments, passes them on in `call` and returns them from `get_config`, as
Keras' own `LossFunctionWrapper` does (keras/src/losses/losses.py).
"""

import keras


class ArgumentLoss(keras.losses.Loss):
    """A `keras.losses.Loss` around a loss function `_function(y_true, y_pred, **arguments)`.

    A subclass sets `_function = staticmethod(the_function)`, validates its arguments in its own
    `__init__` (with the explicit signature and defaults users see) and passes them on:
    `super().__init__(reduction=reduction, name=name, dtype=dtype, alpha=alpha, ...)`. Each
    argument becomes an attribute, goes to `_function` in `call` and comes back from
    `get_config`, so a new argument cannot be forgotten in one of the three places. A subclass
    whose function needs a different call (a mean over the last axis, a choice of function)
    overrides `call` and reads `self.arguments`.
    """

    _function = None

    def __init__(self, *, reduction, name, dtype, **arguments):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._argument_names = tuple(arguments)
        for key, value in arguments.items():
            setattr(self, key, value)

    @property
    def arguments(self):
        """The loss function's keyword arguments, as given to the constructor."""
        return {key: getattr(self, key) for key in self._argument_names}

    def call(self, y_true, y_pred):
        return self._function(y_true, y_pred, **self.arguments)

    def get_config(self):
        return {**super().get_config(), **self.arguments}


def check_number(value, name, low=0.0):
    """A real number >= `low` (booleans and strings refused), returned unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"`{name}` must be a number >= {low:g}. Received: {name}={value!r}")
    return value


def check_weights(class_weights, name="class_weights"):
    """`None`, or non-negative numbers, one per class, not all zero: returned as floats."""
    if class_weights is None:
        return None
    try:
        weights = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        weights = []
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"`{name}` must be non-negative numbers, one per class, not all zero. "
            f"Received: {name}={class_weights!r}"
        )
    return weights


def check_alpha(alpha, name="alpha"):
    """A focal/class weight: `None`, a non-negative number (as float), or a list of them."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return float(check_number(alpha, name))
    return check_weights(alpha, name)
