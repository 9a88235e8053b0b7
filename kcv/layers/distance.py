"""Euclidean distance between two batches of embeddings, safe at distance 0."""

import keras
import tensorflow as tf


def safe_sqrt(squared):
    """`sqrt(squared)` for `squared >= 0` with value 0 and gradient 0 (not inf/NaN) at 0.

    The square root is taken of 1 where `squared == 0` and that branch is discarded, so no
    infinite derivative enters the backward pass (the "double where" of `tf.where`).
    """
    positive = squared > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))),
                    tf.zeros_like(squared))


def euclidean_distance(a, b, squared=False):
    """Euclidean distance between matching rows of `a` and `b`, `[B, 1]`.

    Exactly 0 for identical rows, with a finite (zero) gradient there; away from 0 the gradient
    is the usual `(a - b) / |a - b|`. Computed in float32 (float64 for float64 inputs).

    Args:
        a, b: float `[B, D]` (any leading shape `[..., D]`).
        squared: return the squared distance.

    Returns:
        float32 (float64 for float64 `a`) `[..., 1]`.

    Example:
        >>> euclidean_distance([[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [1.0, 1.0]]).numpy()
        array([[5.],
               [0.]], dtype=float32)
    """
    a = tf.convert_to_tensor(a)
    dtype = tf.float64 if a.dtype == tf.float64 else tf.float32
    diff = tf.cast(a, dtype) - tf.cast(b, dtype)
    d2 = tf.reduce_sum(tf.square(diff), axis=-1, keepdims=True)
    return d2 if squared else safe_sqrt(d2)


@keras.saving.register_keras_serializable(package="kcv")
class EuclideanDistance(keras.layers.Layer):
    """Euclidean (or squared Euclidean) distance between two inputs, `[B, 1]`.

    The distance of `kcv.models.SiameseNetwork`; see `euclidean_distance` (exactly 0 and a
    finite gradient for identical embeddings). Computed in float32, returned in the compute
    dtype.

    Args:
        squared: output the squared distance (default False).
        **kwargs: base `keras.layers.Layer` arguments.

    Input: `[a, b]`, two float `[B, D]`. Output shape: `[B, 1]`.

    Example:
        >>> EuclideanDistance()([np.zeros((1, 2)), np.array([[3.0, 4.0]])]).numpy()
        array([[5.]], dtype=float32)
    """

    def __init__(self, squared=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(squared, bool):
            raise TypeError(f"`squared` must be a bool. Received: squared={squared!r}")
        self.squared = squared

    def build(self, input_shape):
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2
                or not all(isinstance(s, (list, tuple)) for s in input_shape)):
            raise ValueError("EuclideanDistance expects two inputs [a, b]. "
                             f"Received: input_shape={input_shape}")
        a, b = input_shape
        if a[-1] is not None and b[-1] is not None and a[-1] != b[-1]:
            raise ValueError("EuclideanDistance inputs need the same last dimension. "
                             f"Received: input_shape={input_shape}")

    def call(self, inputs):
        a, b = inputs
        return tf.cast(euclidean_distance(a, b, self.squared), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (1,)

    def get_config(self):
        return {**super().get_config(), "squared": self.squared}
