"""Dense upsampling convolution (DUC): learned upsampling by convolution and depth-to-space."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int, input_channels, serialize_initializer


@keras.saving.register_keras_serializable(package="kcv")
class DenseUpsampling(keras.layers.Layer):
    """Dense Upsampling Convolution (DUC): a convolution to `r * r * filters` channels followed
    by depth-to-space, giving a map `r` times larger with `filters` channels.

    The resolution lost to downsampling is carried in the channel dimension: each of the
    `h x w` positions of the feature map predicts the `r x r` block of the full-resolution
    label map it covers, so no bilinear interpolation (which cannot be learned) is needed.

    Formula:
        `y = conv(x)`, `[N, h, w, r*r*L]`; `out[n, h*r + i, w*r + j, l] = y[n, h, w,
        (i*r + j)*L + l]` (the channel order of `tf.nn.depth_to_space`, DEPTH_TO_SPACE in
        TFLite).

    Args:
        filters: output channels L (e.g. the number of classes).
        upsample_factor: r, the upsampling factor (e.g. the network's output stride).
        kernel_size: size of the convolution. Default 3 (the paper's).
        dilation_rate: dilation of the convolution. Default 1.
        use_bias: bias in the convolution. Default True.
        kernel_initializer: initializer of the kernel. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, h, w, C]`. Output shape: `[N, h * r, w * r, filters]`.

    Example:
        >>> x = keras.random.normal((1, 8, 8, 64))
        >>> DenseUpsampling(filters=21, upsample_factor=8)(x).shape
        TensorShape([1, 64, 64, 21])

    Reference:
        Wang et al., "Understanding Convolution for Semantic Segmentation", WACV 2018.
    """

    def __init__(self, filters, upsample_factor, kernel_size=3, dilation_rate=1, use_bias=True,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("upsample_factor", upsample_factor)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("dilation_rate", dilation_rate)
        self.filters = filters
        self.upsample_factor = upsample_factor
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        input_channels(input_shape, "DenseUpsampling")
        self.conv = keras.layers.Conv2D(
            self.upsample_factor ** 2 * self.filters, self.kernel_size, padding="same",
            dilation_rate=self.dilation_rate, use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer, name="conv", dtype=self.dtype_policy)
        self.conv.build(input_shape)

    def call(self, inputs):
        x = self.conv(inputs)
        if self.upsample_factor == 1:  # DepthToSpace needs a block size >= 2
            return x
        return tf.nn.depth_to_space(x, self.upsample_factor)

    def compute_output_shape(self, input_shape):
        r = self.upsample_factor
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else h * r, None if w is None else w * r,
                self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "upsample_factor": self.upsample_factor,
            "kernel_size": self.kernel_size,
            "dilation_rate": self.dilation_rate,
            "use_bias": self.use_bias,
            "kernel_initializer": serialize_initializer(self.kernel_initializer),
        }
