"""Reflection padding of images (`tf.pad(mode="REFLECT")`, MIRROR_PAD in TFLite)."""

import keras
import tensorflow as tf


def _padding_pairs(padding):
    """`padding` as `((top, bottom), (left, right))` of non-negative ints, as ZeroPadding2D."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        pairs = ((padding, padding), (padding, padding))
    elif isinstance(padding, (list, tuple)) and len(padding) == 2:
        pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    else:
        pairs = None
    if (pairs is None or any(len(p) != 2 for p in pairs)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                   for p in pairs for v in p)):
        raise ValueError("`padding` must be a non-negative int, (pad_h, pad_w) or "
                         f"((top, bottom), (left, right)). Received: padding={padding!r}")
    return pairs


@keras.saving.register_keras_serializable(package="kcv")
class ReflectionPadding2D(keras.layers.Layer):
    """Pads the height and width of NHWC images with their reflection (edge not repeated).

    Formula:
        With padding p before the data: `out[p - i] = x[i]` for `i = 1..p` (and likewise at
        the other end), `tf.pad(..., mode="REFLECT")`; `[1, 2, 3]` padded by 2 is
        `[3, 2, 1, 2, 3, 2, 1]`. Each padding must be smaller than the padded size.

    Args:
        padding: an int (all sides), `(pad_h, pad_w)`, or `((top, bottom), (left, right))`,
            as `keras.layers.ZeroPadding2D`. Default 1.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, H + top + bottom, W + left + right, C]`.

    Example:
        >>> x = keras.ops.reshape(keras.ops.arange(3.0), (1, 1, 3, 1))
        >>> ReflectionPadding2D(((0, 0), (2, 2)))(x)[0, 0, :, 0].numpy()
        array([2., 1., 0., 1., 2., 1., 0.], dtype=float32)

    Reference:
        Johnson, Alahi & Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and
        Super-Resolution", ECCV 2016 (reflection padding against border artefacts), as used
        by Zhu et al., "CycleGAN", ICCV 2017.
    """

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        self._pairs = _padding_pairs(padding)
        self.padding = padding

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"ReflectionPadding2D expects NHWC inputs [N, H, W, C]. "
                             f"Received: input_shape={tuple(input_shape)}")
        for axis, pair in zip((1, 2), self._pairs):
            size = input_shape[axis]
            if size is not None and max(pair) >= size:
                raise ValueError(f"`padding` must be smaller than the padded size for "
                                 f"reflection. Received: padding={self.padding!r} for "
                                 f"input_shape={tuple(input_shape)}")

    def call(self, inputs):
        return tf.pad(inputs, [(0, 0), *self._pairs, (0, 0)], mode="REFLECT")

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self._pairs
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else h + top + bottom,
                None if w is None else w + left + right, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}
