"""Where is an op being traced? Helpers for ops that compile their internals with XLA.

Some ops (RoIAlign, deformable convolution) run their gather/scatter internals as small nested
`tf.function(jit_compile=True)` programs, because TensorFlow's own kernels materialise large
intermediates that XLA fuses away. They must not do so when

* the caller is already compiled with XLA (`jit_compile=True`, e.g. Keras' `model.fit`): the
  plain ops then join the caller's XLA program, and nesting a compiled function there is
  pointless;
* a SavedModel is being written (`tf.saved_model.save`, and therefore `export.to_tflite`, which
  goes through a SavedModel): the exported graph must keep portable builtin ops.

TensorFlow has no public API for either question, so both helpers use internal modules. They are
wrapped in `try`/`except` with a safe fallback: if the internal API moves, `in_xla_context()`
answers True and `in_save_context()` answers True, i.e. callers fall back to the plain ops
(always correct, only slower).
"""

import math

import tensorflow as tf


def in_xla_context():
    """True when the default graph (or an enclosing one) is being compiled with XLA.

    Returns:
        bool. False in eager mode and in a plain `tf.function`; True inside
        `tf.function(jit_compile=True)` (and whenever the internal API is unavailable).

    Example:
        >>> in_xla_context()
        False
        >>> bool(tf.function(lambda: tf.constant(in_xla_context()), jit_compile=True)())
        True
    """
    try:
        from tensorflow.python.ops import control_flow_util  # internal: no public API

        return bool(control_flow_util.GraphOrParentsInXlaContext(
            tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001 - any failure of the internal API: assume XLA (plain ops)
        return True


def in_save_context():
    """True while `tf.saved_model.save` traces the functions it exports.

    Returns:
        bool (True whenever the internal API is unavailable).

    Example:
        >>> in_save_context()
        False
    """
    try:
        from tensorflow.python.saved_model import save_context  # internal: no public API

        return bool(save_context.in_save_context())
    except Exception:  # noqa: BLE001 - any failure of the internal API: assume export
        return True


def use_nested_xla():
    """True when an op may run its internals as nested `jit_compile=True` functions.

    That is: not already inside an XLA cluster and not writing a SavedModel (see module doc).
    """
    return not in_xla_context() and not in_save_context()


def padded_bins(bins, bins_per_box):
    """A power-of-two number of boxes, times `bins_per_box`, >= `bins` (an int32 scalar).

    XLA compiles one program per shape; bucketing bounds the recompilations for a varying
    number of boxes K to about log2(K_max).
    """
    boxes = tf.maximum(bins // bins_per_box, 1)
    exponent = tf.math.ceil(tf.math.log(tf.cast(boxes, tf.float64)) / math.log(2.0) - 1e-9)
    return tf.cast(tf.round(2.0 ** exponent), tf.int32) * bins_per_box
