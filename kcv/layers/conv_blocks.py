"""Convolutional building blocks: conv-norm-activation, depthwise separable and inverted-residual
blocks (MobileNet v1/v2). The ResNet blocks built from `ConvBNAct` are in `kcv.layers.residual`.

Every block takes `norm` (`"batch"`, `"layer"`, `"instance"`, `"group"` or `None`, see
`kcv.layers.normalization`) and `norm_groups` (groups for `"group"`), and builds its sublayers in
`build()` under fixed attribute names, so weights keep the same order and paths across saves.
"""

import keras

from kcv.layers._checks import (
    base_block_config,
    build_chain,
    call_chain,
    chain_output_shape,
    check_int_or_pair,
    check_positive_int,
    input_channels,
    set_block_args,
    unit_kwargs,
)
from kcv.layers.normalization import block_normalization


@keras.saving.register_keras_serializable(package="kcv")
class ConvBNAct(keras.layers.Layer):
    """Convolution, normalization, activation: the unit most CNNs are made of.

    `Conv2D` (or `DepthwiseConv2D` when `depthwise=True`) followed by the normalization chosen
    by `norm` and the activation. The convolution has a bias only when asked for (`use_bias`),
    by default only when there is no normalization after it (a bias before batch norm is
    cancelled by the mean subtraction).

    Args:
        filters: output channels. Ignored (must be None) when `depthwise=True`, where the output
            has `in_channels * depth_multiplier` channels.
        kernel_size: int or (kh, kw). Default 3.
        strides: int or (sh, sw). Default 1.
        dilation_rate: int or (dh, dw). Default 1.
        padding: `"same"` (default) or `"valid"`.
        groups: grouped convolution (ResNeXt); must divide the input and output channels.
        depthwise: use a depthwise convolution instead of a full one.
        depth_multiplier: channels per input channel for `depthwise=True`.
        use_bias: bias in the convolution; None (default) means "only when `norm` is None".
        norm: `"batch"` (default), `"layer"`, `"instance"`, `"group"` or None.
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation name or function, or None for a linear output. Default "relu".
        kernel_initializer: initializer of the convolution kernel. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable).

    Input shape: `[N, H, W, C]`. Output shape: `[N, H', W', filters]` with
    `H' = ceil(H / stride)` for `"same"` padding.

    Example:
        >>> x = keras.random.normal((2, 32, 32, 3))
        >>> ConvBNAct(16, kernel_size=3, strides=2)(x).shape
        TensorShape([2, 16, 16, 16])

    Reference:
        Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    """

    def __init__(self, filters=None, kernel_size=3, strides=1, dilation_rate=1, padding="same",
                 groups=1, depthwise=False, depth_multiplier=1, use_bias=None, norm="batch",
                 norm_groups=32, activation="relu", kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        if depthwise:
            if filters is not None:
                raise ValueError("`filters` must be None when `depthwise=True` (the output has "
                                 f"in_channels * depth_multiplier channels). Received: "
                                 f"filters={filters!r}")
            check_positive_int("depth_multiplier", depth_multiplier)
        else:
            check_positive_int("filters", filters)
        if padding not in ("same", "valid"):
            raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        check_positive_int("groups", groups)
        for name, value in (("kernel_size", kernel_size), ("strides", strides),
                            ("dilation_rate", dilation_rate)):
            check_int_or_pair(name, value)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.padding = padding
        self.groups = groups
        self.depthwise = depthwise
        self.depth_multiplier = depth_multiplier
        self.use_bias = use_bias

    def build(self, input_shape):
        channels = input_channels(input_shape, "ConvBNAct")
        bias = self.norm is None if self.use_bias is None else self.use_bias
        if self.depthwise:
            out_channels = channels * self.depth_multiplier
            self.conv = keras.layers.DepthwiseConv2D(
                self.kernel_size, strides=self.strides, padding=self.padding,
                depth_multiplier=self.depth_multiplier, dilation_rate=self.dilation_rate,
                use_bias=bias, depthwise_initializer=self.kernel_initializer, name="conv",
                dtype=self.dtype_policy)
        else:
            out_channels = self.filters
            if channels % self.groups or self.filters % self.groups:
                raise ValueError(
                    f"`groups` must divide the input and output channels. Received: "
                    f"groups={self.groups}, input channels={channels}, filters={self.filters}")
            self.conv = keras.layers.Conv2D(
                self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
                dilation_rate=self.dilation_rate, groups=self.groups, use_bias=bias,
                kernel_initializer=self.kernel_initializer, name="conv",
                dtype=self.dtype_policy)
        self.norm_layer = block_normalization(self, self.norm, out_channels, "norm")
        self.act = (None if self.activation is None else
                    keras.layers.Activation(self.activation, name="act",
                                            dtype=self.dtype_policy))
        build_chain([self.conv, self.norm_layer, self.act], input_shape)

    def call(self, inputs, training=None):
        return call_chain([self.conv, self.norm_layer, self.act], inputs, training)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "padding": self.padding,
            "groups": self.groups,
            "depthwise": self.depthwise,
            "depth_multiplier": self.depth_multiplier,
            "use_bias": self.use_bias,
        }


class _MobileNetBlock(keras.layers.Layer):
    """Shared anatomy of the MobileNet blocks: arguments, the depthwise unit, shape, config.

    Subclasses build their sublayers in `build()` and list them, in order, in `_units()`.
    """

    def __init__(self, filters, kernel_size, strides, dilation_rate, norm, norm_groups,
                 activation, kernel_initializer, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_int_or_pair("strides", strides)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate

    def _depthwise_unit(self, depth_multiplier=1):
        """The k x k depthwise ConvBNAct with this block's geometry and shared arguments."""
        return ConvBNAct(kernel_size=self.kernel_size, strides=self.strides,
                         dilation_rate=self.dilation_rate, depthwise=True,
                         depth_multiplier=depth_multiplier, **unit_kwargs(self, name="depthwise"))

    def call(self, inputs, training=None):
        return call_chain(self._units(), inputs, training)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return chain_output_shape(self._units(), input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="kcv")
class DepthwiseSeparableConv(_MobileNetBlock):
    """Depthwise separable convolution (MobileNet v1): depthwise k x k, norm, activation, then
    pointwise 1 x 1, norm, activation.

    A k x k convolution from C to F channels costs `k*k*C*F` multiply-adds per pixel; the
    separable one costs `k*k*C + C*F`, a reduction by `1/F + 1/k^2`.

    Args:
        filters: output channels of the pointwise convolution.
        kernel_size: depthwise kernel size. Default 3.
        strides: depthwise stride. Default 1.
        dilation_rate: depthwise dilation. Default 1.
        depth_multiplier: channels per input channel in the depthwise step. Default 1.
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation after both steps. Default "relu6" (MobileNet).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 8))
        >>> DepthwiseSeparableConv(32, strides=2)(x).shape
        TensorShape([1, 8, 8, 32])

    Reference:
        Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
        Applications", 2017.
    """

    def __init__(self, filters, kernel_size=3, strides=1, dilation_rate=1, depth_multiplier=1,
                 norm="batch", norm_groups=32, activation="relu6",
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(filters, kernel_size, strides, dilation_rate, norm, norm_groups,
                         activation, kernel_initializer, **kwargs)
        self.depth_multiplier = check_positive_int("depth_multiplier", depth_multiplier)

    def build(self, input_shape):
        input_channels(input_shape, "DepthwiseSeparableConv")
        self.depthwise = self._depthwise_unit(depth_multiplier=self.depth_multiplier)
        self.pointwise = ConvBNAct(self.filters, kernel_size=1,
                                   **unit_kwargs(self, name="pointwise"))
        build_chain(self._units(), input_shape)

    def _units(self):
        return [self.depthwise, self.pointwise]

    def get_config(self):
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier}


@keras.saving.register_keras_serializable(package="kcv")
class InvertedResidual(_MobileNetBlock):
    """MobileNet v2 inverted residual block with a linear bottleneck.

    1 x 1 expansion to `in_channels * expansion` channels (skipped when `expansion == 1`), norm,
    activation; k x k depthwise (stride, dilation), norm, activation; 1 x 1 projection to
    `filters`, norm and *no* activation (linear bottleneck: a ReLU on the low-dimensional
    projection would destroy information). The input is added to the output when the shapes
    allow it: `strides == 1` and `in_channels == filters`.

    Args:
        filters: output channels.
        expansion: expansion factor t of the hidden layer. Default 6.
        strides: depthwise stride (1 or 2 in MobileNet v2). Default 1.
        kernel_size: depthwise kernel size. Default 3.
        dilation_rate: depthwise dilation (for output stride 8/16 in DeepLab). Default 1.
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation of the expansion and depthwise steps. Default "relu6".
        **kwargs: base `keras.layers.Layer` arguments.

    Attributes:
        use_residual: whether the block adds its input (known after `build`).

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 24))
        >>> InvertedResidual(24, expansion=6)(x).shape  # residual block
        TensorShape([1, 16, 16, 24])

    Reference:
        Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
    """

    def __init__(self, filters, expansion=6, strides=1, kernel_size=3, dilation_rate=1,
                 norm="batch", norm_groups=32, activation="relu6",
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(filters, kernel_size, strides, dilation_rate, norm, norm_groups,
                         activation, kernel_initializer, **kwargs)
        self.expansion = check_positive_int("expansion", expansion)

    def build(self, input_shape):
        channels = input_channels(input_shape, "InvertedResidual")
        self.expand = (None if self.expansion == 1 else
                       ConvBNAct(channels * self.expansion, kernel_size=1,
                                 **unit_kwargs(self, name="expand")))
        self.depthwise = self._depthwise_unit()
        self.project = ConvBNAct(self.filters, kernel_size=1,
                                 **unit_kwargs(self, name="project", activation=None))
        self.use_residual = (check_int_or_pair("strides", self.strides) == (1, 1)
                             and channels == self.filters)
        self.add = keras.layers.Add(name="add", dtype=self.dtype_policy) if self.use_residual \
            else None
        build_chain(self._units(), input_shape)

    def call(self, inputs, training=None):
        x = super().call(inputs, training)
        return self.add([inputs, x]) if self.use_residual else x

    def _units(self):
        return [self.expand, self.depthwise, self.project]

    def get_config(self):
        return {**super().get_config(), "expansion": self.expansion}
