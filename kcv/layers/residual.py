"""ResNet blocks: basic and bottleneck, original (He et al. 2016a) and full pre-activation
(He et al. 2016b), built from `kcv.layers.ConvBNAct`.

Every block takes `norm` (`"batch"`, `"layer"`, `"instance"`, `"group"` or `None`, see
`kcv.layers.normalization`) and `norm_groups` (groups for `"group"`), and builds its sublayers in
`build()` under fixed attribute names (`conv1`, `conv2`, `conv3`, `shortcut`, `preact_norm`), so
weights keep the same order and paths across saves.
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
from kcv.layers.conv_blocks import ConvBNAct
from kcv.layers.normalization import block_normalization


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
        check_int_or_pair("strides", strides)
        check_int_or_pair("dilation_rate", dilation_rate)
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
        self.use_projection = (check_int_or_pair("strides", self.strides) != (1, 1)
                               or channels != self.output_channels)
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
        x = (call_chain([self.preact_norm, self.preact_act], inputs, training) if self._PREACT
             else inputs)
        # A projection reads the pre-activated input; the identity shortcut is the input itself.
        shortcut = self.shortcut(x, training=training) if self.use_projection else inputs
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
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation. Default "relu".
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
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation. Default "relu".
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

    `x + conv3x3(relu(bn(conv3x3_s(relu(bn(x))))))`. When the shape changes, the shortcut is a
    1 x 1 strided convolution applied to the pre-activated input `relu(bn(x))` (as in the
    authors' code). The output is not normalised: the next block's pre-activation does it, so
    put a final norm + activation after the last block of a network.

    Args:
        filters, strides, dilation_rate, norm, norm_groups, activation, kernel_initializer,
            **kwargs: as in `BasicBlock`.

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
        filters, strides, dilation_rate, norm, norm_groups, activation, kernel_initializer,
            **kwargs: as in `Bottleneck`.

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
