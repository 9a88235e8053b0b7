"""Atrous Spatial Pyramid Pooling (DeepLabV3)."""

import keras
import tensorflow as tf

from kcv.layers._checks import (
    base_block_config,
    check_positive_int,
    check_rates,
    input_channels,
    set_block_args,
    unit_kwargs,
)
from kcv.layers.conv_blocks import ConvBNAct


@keras.saving.register_keras_serializable(package="kcv")
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling, as in DeepLabV3.

    Parallel branches on the same feature map, each `filters` wide and each followed by norm +
    activation: a 1 x 1 convolution; one 3 x 3 atrous convolution per rate in `rates`; and
    image pooling (global average pooling -> 1 x 1 convolution -> norm -> activation ->
    bilinear upsampling back to the input size). The branches are concatenated and projected
    by a 1 x 1 convolution + norm + activation, then dropout.

    The upsampling size is read from the static input shape when it is known, so the layer
    converts to TFLite with builtin ops (RESIZE_BILINEAR with a constant size) for any static
    input size; with unknown spatial size the run-time shape is used.

    Batch norm on the pooling branch normalises a 1 x 1 map: at inference it uses the moving
    statistics (any batch size, including 1, works); in training, a batch of one gives a zero
    batch variance there, so that branch outputs `beta` (finite, but uninformative): train
    with batches larger than 1, or use `norm="group"`/`"layer"`.

    Args:
        filters: width of every branch and of the output. Default 256 (the paper's).
        rates: dilation rates of the 3 x 3 branches. Default (6, 12, 18) (output stride 16;
            double them for output stride 8).
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation. Default "relu".
        dropout: dropout rate after the projection. Default 0.0 (torchvision uses 0.5).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, H, W, filters]`.

    Example:
        >>> x = keras.random.normal((1, 32, 32, 64))
        >>> ASPP(filters=32, rates=(6, 12, 18))(x).shape
        TensorShape([1, 32, 32, 32])

    Reference:
        Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017
        (DeepLabV3), section 3.3.
    """

    def __init__(self, filters=256, rates=(6, 12, 18), norm="batch", norm_groups=32,
                 activation="relu", dropout=0.0, kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_rates(rates)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        self.filters = filters
        self.rates = rates
        self.dropout = dropout

    def build(self, input_shape):
        input_channels(input_shape, "ASPP")

        def unit(kernel_size, name, dilation_rate=1):
            return ConvBNAct(self.filters, kernel_size=kernel_size, dilation_rate=dilation_rate,
                             **unit_kwargs(self, name=name))

        self.conv1x1 = unit(1, "conv1x1")
        self.atrous = [unit(3, f"atrous_{i}", dilation_rate=r) for i, r in enumerate(self.rates)]
        self.pool = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool",
                                                        dtype=self.dtype_policy)
        self.pool_conv = unit(1, "pool_conv")
        self.concat = keras.layers.Concatenate(axis=-1, name="concat", dtype=self.dtype_policy)
        self.project = unit(1, "project")
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout",
                                                  dtype=self.dtype_policy)
        for branch in [self.conv1x1, *self.atrous]:
            branch.build(input_shape)
        self.pool_conv.build((input_shape[0], 1, 1, input_shape[-1]))
        num_branches = len(self.rates) + 2
        self.project.build(tuple(input_shape[:-1]) + (num_branches * self.filters,))

    def call(self, inputs, training=None):
        branches = [self.conv1x1(inputs, training=training)]
        branches += [branch(inputs, training=training) for branch in self.atrous]
        pooled = self.pool_conv(self.pool(inputs), training=training)
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            size = tf.shape(inputs)[1:3]
        else:
            size = (height, width)
        upsampled = tf.image.resize(pooled, size, method="bilinear")
        branches.append(tf.cast(upsampled, pooled.dtype))  # resize returns float32
        x = self.project(self.concat(branches), training=training)
        return self.dropout_layer(x, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "rates": list(self.rates),
            "dropout": self.dropout,
        }
