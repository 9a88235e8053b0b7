"""CBAM: channel attention, spatial attention, and the two in sequence (Woo et al., 2018)."""

import keras

from kcv.layers._checks import (
    check_activation,
    check_positive_int,
    input_channels,
    serialize_activation,
)


@keras.saving.register_keras_serializable(package="kcv")
class ChannelAttention(keras.layers.Layer):
    """CBAM channel attention: reweights channels by a shared MLP over pooled features.

    Formula:
        `Mc = sigmoid(MLP(avgpool(F)) + MLP(maxpool(F)))`, `MLP(v) = W1 relu(W0 v + b0) + b1`,
        output `F * Mc` (broadcast over H, W). Average pooling encodes global statistics, max
        pooling the most salient part; the MLP weights are shared between the two.

    Args:
        reduction_ratio: hidden units of the MLP are `max(1, C // reduction_ratio)`. Default 16
            (the paper's r).
        activation: hidden activation of the MLP. Default "relu".
        use_bias: biases in the MLP. Default True.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: same.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 32))
        >>> ChannelAttention(reduction_ratio=8)(x).shape
        TensorShape([2, 8, 8, 32])

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
    """

    def __init__(self, reduction_ratio=16, activation="relu", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("reduction_ratio", reduction_ratio)
        check_activation(activation)
        self.reduction_ratio = reduction_ratio
        self.activation = activation
        self.use_bias = use_bias

    def build(self, input_shape):
        channels = input_channels(input_shape, "ChannelAttention")
        hidden = max(1, channels // self.reduction_ratio)
        self.avg_pool = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool",
                                                            dtype=self.dtype_policy)
        self.max_pool = keras.layers.GlobalMaxPooling2D(keepdims=True, name="max_pool",
                                                        dtype=self.dtype_policy)
        self.mlp_hidden = keras.layers.Dense(hidden, activation=self.activation,
                                             use_bias=self.use_bias, name="mlp_hidden",
                                             dtype=self.dtype_policy)
        self.mlp_output = keras.layers.Dense(channels, use_bias=self.use_bias,
                                             name="mlp_output", dtype=self.dtype_policy)
        pooled = (input_shape[0], 1, 1, channels)
        self.mlp_hidden.build(pooled)
        self.mlp_output.build(pooled[:-1] + (hidden,))

    def call(self, inputs):
        return inputs * self.attention(inputs)

    def attention(self, inputs):
        """The attention map `Mc`, `[N, 1, 1, C]`, values in (0, 1)."""
        avg = self.mlp_output(self.mlp_hidden(self.avg_pool(inputs)))
        mx = self.mlp_output(self.mlp_hidden(self.max_pool(inputs)))
        return keras.ops.sigmoid(avg + mx)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "reduction_ratio": self.reduction_ratio,
            "activation": serialize_activation(self.activation),
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package="kcv")
class SpatialAttention(keras.layers.Layer):
    """CBAM spatial attention: reweights positions by a convolution over channel statistics.

    Formula:
        `Ms = sigmoid(conv_kxk([mean_c(F); max_c(F)]))` (mean and max over the channel axis,
        stacked as 2 channels in that order, one output channel, "same" padding),
        output `F * Ms` (broadcast over C).

    Args:
        kernel_size: size of the convolution. Default 7 (the paper's choice: a large field).
        use_bias: bias in the convolution. Default True.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: same.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 32))
        >>> SpatialAttention()(x).shape
        TensorShape([2, 8, 8, 32])

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
    """

    def __init__(self, kernel_size=7, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.use_bias = use_bias

    def build(self, input_shape):
        input_channels(input_shape, "SpatialAttention")
        self.conv = keras.layers.Conv2D(1, self.kernel_size, padding="same",
                                        use_bias=self.use_bias, name="conv",
                                        dtype=self.dtype_policy)
        self.conv.build(tuple(input_shape[:-1]) + (2,))

    def call(self, inputs):
        return inputs * self.attention(inputs)

    def attention(self, inputs):
        """The attention map `Ms`, `[N, H, W, 1]`, values in (0, 1)."""
        stats = keras.ops.concatenate(
            [keras.ops.mean(inputs, axis=-1, keepdims=True),
             keras.ops.max(inputs, axis=-1, keepdims=True)], axis=-1)
        return keras.ops.sigmoid(self.conv(stats))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="kcv")
class CBAM(keras.layers.Layer):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    Formula:
        `F' = ChannelAttention(F)`, `F'' = SpatialAttention(F')` (the sequential,
        channel-first arrangement the paper found best). Drop it after any convolution block,
        or on the residual branch of a ResNet block before the addition.

    Args:
        reduction_ratio: channel-MLP reduction r. Default 16.
        kernel_size: spatial-attention convolution size. Default 7.
        activation: hidden activation of the channel MLP. Default "relu".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: same.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 32))
        >>> CBAM(reduction_ratio=8)(x).shape
        TensorShape([2, 8, 8, 32])

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
    """

    def __init__(self, reduction_ratio=16, kernel_size=7, activation="relu", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("reduction_ratio", reduction_ratio)
        check_positive_int("kernel_size", kernel_size)
        check_activation(activation)
        self.reduction_ratio = reduction_ratio
        self.kernel_size = kernel_size
        self.activation = activation

    def build(self, input_shape):
        input_channels(input_shape, "CBAM")
        self.channel_attention = ChannelAttention(self.reduction_ratio, self.activation,
                                                  name="channel_attention",
                                                  dtype=self.dtype_policy)
        self.spatial_attention = SpatialAttention(self.kernel_size, name="spatial_attention",
                                                  dtype=self.dtype_policy)
        self.channel_attention.build(input_shape)
        self.spatial_attention.build(input_shape)

    def call(self, inputs):
        return self.spatial_attention(self.channel_attention(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "reduction_ratio": self.reduction_ratio,
            "kernel_size": self.kernel_size,
            "activation": serialize_activation(self.activation),
        }
