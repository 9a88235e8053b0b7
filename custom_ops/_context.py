"""Where is an op being traced? Helpers for ops that compile their internals with XLA.

Some ops run their internals as small nested `tf.function(jit_compile=True)` programs: RoIAlign
and deformable convolution their gathers/scatters (TensorFlow's own kernels materialise large
intermediates that XLA fuses away), the NMS family its `while_loop` (XLA fuses each step's small
ops). They must not do so when

* the caller is already compiled with XLA (`jit_compile=True`, e.g. Keras' `model.fit`): the
  plain ops then join the caller's XLA program, and nesting a compiled function there is
  pointless;
* a SavedModel is being written (`tf.saved_model.save`, and therefore `export.to_tflite`, which
  goes through a SavedModel): the exported graph must keep portable builtin ops.

TensorFlow has no public API for either question; `custom_ops._compat` asks its internals.
When an internal is missing (a TensorFlow upgrade moved it) the answer is unknown, and each helper
returns its `if_unknown` argument: `True` by default, so `use_nested_xla()` is False and ops take
the plain path (always correct, only slower); a check that would *refuse* something passes
`if_unknown=False`, so a missing internal never turns a working call into an error.
"""

import math

import tensorflow as tf

from custom_ops import _compat


def in_xla_context(if_unknown=True):
    """True when the default graph (or an enclosing one) is being compiled with XLA.

    Args:
        if_unknown: the answer when TensorFlow's internal API is unavailable.

    Returns:
        bool. False in eager mode and in a plain `tf.function`; True inside
        `tf.function(jit_compile=True)`.

    Example:
        >>> in_xla_context()
        False
        >>> bool(tf.function(lambda: tf.constant(in_xla_context()), jit_compile=True)())
        True
    """
    answer = _compat.graph_in_xla_context(tf.compat.v1.get_default_graph())
    return if_unknown if answer is None else answer


def in_save_context(if_unknown=True):
    """True while `tf.saved_model.save` traces the functions it exports.

    Args:
        if_unknown: the answer when TensorFlow's internal API is unavailable.

    Returns:
        bool.

    Example:
        >>> in_save_context()
        False
    """
    answer = _compat.in_save_context()
    return if_unknown if answer is None else answer


def use_nested_xla():
    """True when an op may run its internals as nested `jit_compile=True` functions.

    That is: not already inside an XLA cluster and not writing a SavedModel (see module doc);
    False when TensorFlow cannot tell.

    Example:
        >>> use_nested_xla()  # eager
        True
        >>> bool(tf.function(lambda: tf.constant(use_nested_xla()), jit_compile=True)())
        False
    """
    return not in_xla_context() and not in_save_context()


def padded_bins(bins, bins_per_box):
    """A power-of-two number of boxes, times `bins_per_box`, >= `bins` (an int32 scalar).

    XLA compiles one program per shape; bucketing bounds the recompilations for a varying
    number of boxes K to about log2(K_max).

    Example:
        >>> int(padded_bins(tf.constant(5 * 4), bins_per_box=4))  # 5 boxes -> 8 boxes
        32
    """
    boxes = tf.maximum(bins // bins_per_box, 1)
    exponent = tf.math.ceil(tf.math.log(tf.cast(boxes, tf.float64)) / math.log(2.0) - 1e-9)
    return tf.cast(tf.round(2.0 ** exponent), tf.int32) * bins_per_box
