"""Every private Keras/TensorFlow attribute kcv touches, in one place, each with its reason.

TensorFlow internals (no public API; see `custom_ops._compat`, re-exported here so that kcv code
has a single place to ask): `graph_in_xla_context` and `in_save_context`, which answer None when
the internal is gone so that callers take the plain, slower path.

Keras privates (no public substitute):

* `keras.optimizers.Optimizer._learning_rate`: the learning-rate variable or schedule itself.
  `kcv.training.LRFinder` swaps in its sweep schedule and afterwards puts back *the same object*;
  the public `optimizer.learning_rate` setter cannot (given a schedule it replaces the variable
  for good, and its getter returns the current value, not the variable or schedule).
* `keras.Model._distribute_strategy`: the strategy the model was built under. Keras 3 `fit`
  fails under a multi-worker `MultiWorkerMirroredStrategy` (keras-team/keras#20585);
  `kcv.training.fit` clears this attribute so that Keras skips its broken distributed build and
  runs kcv's per-replica train function inside the surrounding `strategy.scope()` instead.
* `keras.layers.Layer._convert_input_args` and `._allow_non_tensor_positional_args`: set by
  `kcv.layers.RoIAlign`/`RoIPool`/`MultiScaleRoIAlign` (as Keras' own functional models do)
  so that Keras does not autocast their box inputs to float16 under mixed precision (pixel
  coordinates need float32; the layers cast the feature maps themselves) and, with that
  conversion off, still accepts NumPy arrays in their input list.

`PRIVATE_ATTRIBUTES` lists all of them (with custom_ops' TensorFlow ones) as
`(owner, attribute, why)`; `tests/test_compat.py` checks each exists in the installed Keras and
TensorFlow, so an upgrade that removes one fails there, by name, not deep inside a training run.
"""

import keras

from custom_ops._compat import PRIVATE_ATTRIBUTES as _TF_ATTRIBUTES
from custom_ops._compat import graph_in_xla_context, in_save_context

_KERAS_ATTRIBUTES = (
    ("keras.optimizers.Optimizer", "_learning_rate",
     "LRFinder swaps the rate variable/schedule for its sweep and restores the same object"),
    ("keras.Model", "_distribute_strategy",
     "fit under multi-worker skips Keras' broken distributed build (keras-team/keras#20585)"),
    ("keras.layers.Layer", "_convert_input_args",
     "the RoI layers keep their boxes float32 under mixed precision (no input autocast)"),
    ("keras.layers.Layer", "_allow_non_tensor_positional_args",
     "the RoI layers accept NumPy arrays in their input list (input conversion is off)"),
)

PRIVATE_ATTRIBUTES = _TF_ATTRIBUTES + _KERAS_ATTRIBUTES

_OWNERS = {"keras.optimizers.Optimizer": keras.optimizers.Optimizer, "keras.Model": keras.Model}


def _require(obj, owner, attribute):
    if not isinstance(obj, _OWNERS[owner]):
        raise TypeError(f"Expected a {owner}. Received: {type(obj).__name__}")
    if not hasattr(obj, attribute):
        raise RuntimeError(
            f"This Keras ({keras.__version__}) has no `{owner}.{attribute}`, which kcv relies on "
            "(see kcv/_compat.py). Install a Keras version kcv supports (pyproject.toml)."
        )


def get_learning_rate(optimizer):
    """The optimizer's learning-rate object itself: a `keras.Variable` or a schedule.

    Example:
        >>> import keras
        >>> type(get_learning_rate(keras.optimizers.SGD(0.1))).__name__
        'Variable'
    """
    _require(optimizer, "keras.optimizers.Optimizer", "_learning_rate")
    return optimizer._learning_rate


def set_learning_rate(optimizer, value):
    """Makes `value` (a variable or a `LearningRateSchedule`) the optimizer's rate object.

    Example:
        >>> import keras
        >>> optimizer = keras.optimizers.SGD(0.1)
        >>> set_learning_rate(optimizer, keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5))
        >>> float(optimizer.learning_rate)  # the schedule at iteration 0
        1.0
    """
    _require(optimizer, "keras.optimizers.Optimizer", "_learning_rate")
    optimizer._learning_rate = value


def detach_distribute_strategy(model):
    """Makes Keras treat `model` as built outside any strategy (see the module docstring)."""
    _require(model, "keras.Model", "_distribute_strategy")
    model._distribute_strategy = None


__all__ = ["PRIVATE_ATTRIBUTES", "detach_distribute_strategy", "get_learning_rate",
           "graph_in_xla_context", "in_save_context", "set_learning_rate"]
