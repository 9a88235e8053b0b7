"""Convolutional building blocks: conv-norm-activation, separable and inverted-residual blocks,
ResNet basic/bottleneck blocks (original and full pre-activation).

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


@keras.saving.register_keras_serializable(package="kcv")
class DepthwiseSeparableConv(keras.layers.Layer):
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
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation after both steps. Default "relu6" (MobileNet).
        kernel_initializer: initializer of both kernels. Default "he_normal".
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
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("depth_multiplier", depth_multiplier)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.depth_multiplier = depth_multiplier

    def build(self, input_shape):
        input_channels(input_shape, "DepthwiseSeparableConv")
        self.depthwise = ConvBNAct(
            kernel_size=self.kernel_size, strides=self.strides,
            dilation_rate=self.dilation_rate, depthwise=True,
            depth_multiplier=self.depth_multiplier, **unit_kwargs(self, name="depthwise"))
        self.pointwise = ConvBNAct(self.filters, kernel_size=1,
                                   **unit_kwargs(self, name="pointwise"))
        build_chain([self.depthwise, self.pointwise], input_shape)

    def call(self, inputs, training=None):
        return call_chain([self.depthwise, self.pointwise], inputs, training)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return chain_output_shape([self.depthwise, self.pointwise], input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "depth_multiplier": self.depth_multiplier,
        }


@keras.saving.register_keras_serializable(package="kcv")
class InvertedResidual(keras.layers.Layer):
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
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation of the expansion and depthwise steps. Default "relu6".
        kernel_initializer: initializer of the kernels. Default "he_normal".
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
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("expansion", expansion)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.expansion = expansion
        self.strides = strides
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate

    def build(self, input_shape):
        channels = input_channels(input_shape, "InvertedResidual")
        self.expand = (None if self.expansion == 1 else
                       ConvBNAct(channels * self.expansion, kernel_size=1,
                                 **unit_kwargs(self, name="expand")))
        self.depthwise = ConvBNAct(
            kernel_size=self.kernel_size, strides=self.strides,
            dilation_rate=self.dilation_rate, depthwise=True,
            **unit_kwargs(self, name="depthwise"))
        self.project = ConvBNAct(self.filters, kernel_size=1,
                                 **unit_kwargs(self, name="project", activation=None))
        strides = self.strides if isinstance(self.strides, int) else tuple(self.strides)
        self.use_residual = strides in (1, (1, 1)) and channels == self.filters
        self.add = keras.layers.Add(name="add", dtype=self.dtype_policy) if self.use_residual \
            else None
        build_chain([self.expand, self.depthwise, self.project], input_shape)

    def call(self, inputs, training=None):
        x = call_chain([self.expand, self.depthwise, self.project], inputs, training)
        return self.add([inputs, x]) if self.use_residual else x

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return chain_output_shape([self.expand, self.depthwise, self.project], input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "expansion": self.expansion,
            "strides": self.strides,
            "kernel_size": self.kernel_size,
            "dilation_rate": self.dilation_rate,
        }


class _ResidualBlock(keras.layers.Layer):
    """Shared anatomy of the four ResNet blocks (arguments, shortcut, config).

    Subclasses set `_EXPANSION` (output channels = filters * expansion), `_PREACT` and implement
    `_residual_layers(channels)` returning the residual branch as a list of sublayers.
    """

    _EXPANSION = 1
    _PREACT = False

    def __init__(self, filters, strides=1, dilation_rate=1, norm="batch", norm_groups=32,
                 activation="relu", kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.strides = strides
        self.dilation_rate = dilation_rate

    @property
    def output_channels(self):
        return self.filters * self._EXPANSION

    def _conv(self, filters, kernel_size, name, strides=1, dilation_rate=1, activation="default",
              norm="default"):
        """A ConvBNAct with this block's settings."""
        overrides = {"name": name}
        if norm != "default":
            overrides["norm"] = norm
        if activation != "default":
            overrides["activation"] = activation
        return ConvBNAct(filters, kernel_size=kernel_size, strides=strides,
                         dilation_rate=dilation_rate, **unit_kwargs(self, **overrides))

    def build(self, input_shape):
        channels = input_channels(input_shape, self.__class__.__name__)
        strides = self.strides if isinstance(self.strides, int) else tuple(self.strides)
        self.use_projection = strides not in (1, (1, 1)) or channels != self.output_channels
        if self._PREACT:
            self.preact_norm = block_normalization(self, self.norm, channels, "preact_norm")
            self.preact_act = keras.layers.Activation(self.activation, name="preact_act",
                                                      dtype=self.dtype_policy)
            shape = build_chain([self.preact_norm, self.preact_act], input_shape)
        else:
            shape = tuple(input_shape)
        self.residual = self._residual_layers(channels)
        # Original ResNet: 1x1 conv + norm on the shortcut; pre-activation: a bare 1x1 conv on
        # the pre-activated input (He et al. 2016b), the sum is normalised by the next block.
        self.shortcut = (self._conv(self.output_channels, 1, "shortcut", strides=self.strides,
                                    activation=None, norm=None if self._PREACT else "default")
                         if self.use_projection else None)
        if self.shortcut is not None:
            self.shortcut.build(shape)
        build_chain(self.residual, shape)
        self.add = keras.layers.Add(name="add", dtype=self.dtype_policy)
        self.out_act = (None if self._PREACT else
                        keras.layers.Activation(self.activation, name="out_act",
                                                dtype=self.dtype_policy))

    def call(self, inputs, training=None):
        if self._PREACT:
            x = call_chain([self.preact_norm, self.preact_act], inputs, training)
            shortcut = self.shortcut(x, training=training) if self.use_projection else inputs
        else:
            x = inputs
            shortcut = self.shortcut(inputs, training=training) if self.use_projection \
                else inputs
        x = self.add([shortcut, call_chain(self.residual, x, training)])
        return x if self.out_act is None else self.out_act(x)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return chain_output_shape(self.residual, input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="kcv")
class BasicBlock(_ResidualBlock):
    """ResNet basic block (ResNet-18/34): two 3 x 3 convolutions with a shortcut.

    `relu(x_proj + bn(conv3x3(relu(bn(conv3x3_s(x))))))`, where the shortcut `x_proj` is `x`
    itself, or a 1 x 1 strided convolution + norm when the stride is not 1 or the channel count
    changes (option B of the paper).

    Args:
        filters: channels of both convolutions and of the output.
        strides: stride of the first convolution (and of the projection). Default 1.
        dilation_rate: dilation of the 3 x 3 convolutions. Default 1.
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation. Default "relu".
        kernel_initializer: initializer of the kernels. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 32))
        >>> BasicBlock(64, strides=2)(x).shape
        TensorShape([1, 8, 8, 64])

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def _residual_layers(self, channels):
        return [self._conv(self.filters, 3, "conv1", strides=self.strides,
                           dilation_rate=self.dilation_rate),
                self._conv(self.filters, 3, "conv2", dilation_rate=self.dilation_rate,
                           activation=None)]


@keras.saving.register_keras_serializable(package="kcv")
class Bottleneck(_ResidualBlock):
    """ResNet bottleneck block (ResNet-50/101/152): 1 x 1 reduce, 3 x 3, 1 x 1 expand (x4).

    The stride sits on the 3 x 3 convolution (ResNet v1.5, as torchvision and most later
    work; the original paper put it on the first 1 x 1). Output channels are `4 * filters`.
    The shortcut is the identity, or a 1 x 1 strided convolution + norm when shapes differ.

    Args:
        filters: channels of the 1 x 1 and 3 x 3 convolutions; the output has `4 * filters`.
        strides: stride of the 3 x 3 convolution (and of the projection). Default 1.
        dilation_rate: dilation of the 3 x 3 convolution. Default 1.
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation. Default "relu".
        kernel_initializer: initializer of the kernels. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), 4 * filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 64))
        >>> Bottleneck(16)(x).shape  # identity shortcut: 4 * 16 == 64
        TensorShape([1, 16, 16, 64])

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    _EXPANSION = 4

    def _residual_layers(self, channels):
        return [self._conv(self.filters, 1, "conv1"),
                self._conv(self.filters, 3, "conv2", strides=self.strides,
                           dilation_rate=self.dilation_rate),
                self._conv(self.output_channels, 1, "conv3", activation=None)]


def _preact_conv(block, filters, kernel_size, name, strides=1, dilation_rate=1, last=False):
    """Conv, then (unless last) norm + activation: the pre-activation of the next conv."""
    return block._conv(filters, kernel_size, name, strides=strides, dilation_rate=dilation_rate,
                       activation=None if last else "default", norm=None if last else "default")


@keras.saving.register_keras_serializable(package="kcv")
class PreActBasicBlock(_ResidualBlock):
    """Full pre-activation basic block (ResNet v2): norm, activation, conv, norm, activation,
    conv, plus the shortcut, with nothing after the addition.

    `x + conv3x3(relu(bn(conv3x3_s(relu(bn(x)))))))`. When the shape changes, the shortcut is a
    1 x 1 strided convolution applied to the pre-activated input `relu(bn(x))` (as in the
    authors' code). The output is not normalised: the next block's pre-activation does it, so
    put a final norm + activation after the last block of a network.

    Args:
        filters: channels of both convolutions and of the output.
        strides: stride of the first convolution (and of the projection). Default 1.
        dilation_rate: dilation of the 3 x 3 convolutions. Default 1.
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation. Default "relu".
        kernel_initializer: initializer of the kernels. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 32))
        >>> PreActBasicBlock(32)(x).shape
        TensorShape([1, 16, 16, 32])

    Reference:
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """

    _PREACT = True

    def _residual_layers(self, channels):
        return [_preact_conv(self, self.filters, 3, "conv1", strides=self.strides,
                             dilation_rate=self.dilation_rate),
                _preact_conv(self, self.filters, 3, "conv2", dilation_rate=self.dilation_rate,
                             last=True)]


@keras.saving.register_keras_serializable(package="kcv")
class PreActBottleneck(_ResidualBlock):
    """Full pre-activation bottleneck block (ResNet v2): (norm, activation, conv) x 3 with
    1 x 1 reduce, 3 x 3 (strided), 1 x 1 expand to `4 * filters`, plus the shortcut.

    The shortcut is the identity, or a 1 x 1 strided convolution on the pre-activated input
    when the shape changes. Nothing follows the addition.

    Args:
        filters: channels of the 1 x 1 and 3 x 3 convolutions; the output has `4 * filters`.
        strides: stride of the 3 x 3 convolution (and of the projection). Default 1.
        dilation_rate: dilation of the 3 x 3 convolution. Default 1.
        norm: normalization kind (see `ConvBNAct`). Default "batch".
        norm_groups: groups for `norm="group"`. Default 32.
        activation: activation. Default "relu".
        kernel_initializer: initializer of the kernels. Default "he_normal".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, ceil(H / s), ceil(W / s), 4 * filters]`.

    Example:
        >>> x = keras.random.normal((1, 16, 16, 64))
        >>> PreActBottleneck(32, strides=2)(x).shape
        TensorShape([1, 8, 8, 128])

    Reference:
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """

    _EXPANSION = 4
    _PREACT = True

    def _residual_layers(self, channels):
        return [_preact_conv(self, self.filters, 1, "conv1"),
                _preact_conv(self, self.filters, 3, "conv2", strides=self.strides,
                             dilation_rate=self.dilation_rate),
                _preact_conv(self, self.output_channels, 1, "conv3", last=True)]
