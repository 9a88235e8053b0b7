"""Deformable convolution layer (DCN v1 and v2), wrapping `custom_ops.deform_conv2d`."""

import keras

from custom_ops.deform_conv import check_column_budget, deform_conv2d
from kcv.layers._checks import (
    check_activation,
    check_int_or_pair,
    check_positive_int,
    input_channels,
    serialize_activation,
)

_PADDINGS = ("same", "valid")


@keras.saving.register_keras_serializable(package="kcv")
class DeformableConv2D(keras.layers.Layer):
    """Deformable 2-D convolution with its own offset (and mask) predictor.

    A plain convolution `offset_conv` (same kernel size, strides, padding and dilation, all input
    channels) predicts for every output pixel `2 * offset_groups * kh * kw` sampling offsets and,
    when `modulated`, `offset_groups * kh * kw` mask logits passed through a sigmoid (DCNv2).
    `offset_conv` starts at zero, so a fresh layer equals a plain convolution with the same
    kernel - times 0.5 when modulated, since sigmoid(0) = 0.5 - as in mmcv's
    `DeformConv2dPack` / `ModulatedDeformConv2dPack`; training then learns where to sample.

    Formula:
        `y[p] = act(b + sum_k w_k * m_k(p) * x(p + p_k + dp_k(p)))`, with `x(.)` bilinear (zero
        outside the input), `p_k` the regular kernel grid, `dp_k` the learned offsets and
        `m_k` the learned mask (1 when `modulated=False`).

    Args:
        filters: number of output channels (a multiple of `groups`).
        kernel_size: int or `(kh, kw)`.
        strides: int or `(sh, sw)`. Default 1.
        padding: `"same"` (default; output `ceil(H / stride)`, as `keras.layers.Conv2D`) or
            `"valid"`.
        dilation_rate: int or `(dh, dw)`. Default 1. As in `keras.layers.Conv2D`, strides > 1
            cannot be combined with dilation > 1 (the offset predictor is a Keras Conv2D).
        groups: grouped convolution: input channels and `filters` are split into `groups`
            blocks. Default 1.
        offset_groups: input channels are split into this many blocks, each with its own
            offsets (and mask). Default 1.
        modulated: `True` (default) for DCNv2 (learned mask), `False` for DCNv1.
        use_bias: add a bias. Default True.
        activation: activation applied to the output, or `None` (default).
        offset_scale: the predicted offsets are `offset_scale * offset_conv(x)`. Default 1.0.
            With Adam-type optimizers this acts as a learning-rate multiplier for the offset
            predictor; the DCN papers train the offset layers with a reduced learning rate,
            and values such as 0.1 keep the offsets from running away early in training
            (see examples/deformable_conv.py).
        kernel_initializer, bias_initializer: of the main kernel `[kh, kw, C / groups,
            filters]` and bias. Defaults "glorot_uniform", "zeros".
        kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint: for the main
            kernel and bias. Default None.
        column_budget_bytes: non-negative int, passed to `custom_ops.deform_conv2d`: when the
            sampled columns (`N * H_out * W_out * kh * kw * C` values of the compute dtype;
            static shapes) fit in this many bytes, the forward pass keeps them for the backward pass instead of
            sampling again (faster training steps, more memory held between the passes; see
            BENCHMARKS.md). 0 (default) never keeps them. Same numbers either way.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]` (static `C`). Output shape: `[N, H_out, W_out, filters]`.

    Example:
        >>> layer = DeformableConv2D(32, 3, offset_groups=2)
        >>> y = layer(keras.random.normal((2, 16, 16, 8)))
        >>> y.shape
        TensorShape([2, 16, 16, 32])
        >>> offsets, mask = layer.offsets_and_mask(keras.random.normal((2, 16, 16, 8)))
        >>> offsets.shape, mask.shape  # (group, row, col, (dy, dx)) and (group, row, col)
        (TensorShape([2, 16, 16, 36]), TensorShape([2, 16, 16, 18]))

    Reference:
        Dai et al., "Deformable Convolutional Networks", ICCV 2017 (arXiv:1703.06211);
        Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019
        (arXiv:1811.11168).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", dilation_rate=1,
                 groups=1, offset_groups=1, modulated=True, use_bias=True, activation=None,
                 offset_scale=1.0,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, column_budget_bytes=0, **kwargs):
        super().__init__(**kwargs)
        check_column_budget(column_budget_bytes)
        check_positive_int("filters", filters)
        check_positive_int("groups", groups)
        check_positive_int("offset_groups", offset_groups)
        if filters % groups:
            raise ValueError(
                f"`filters` must be divisible by `groups`. Received: filters={filters}, "
                f"groups={groups}"
            )
        kernel = check_int_or_pair("kernel_size", kernel_size)
        stride = check_int_or_pair("strides", strides)
        dilation = check_int_or_pair("dilation_rate", dilation_rate)
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(f"`padding` must be one of {_PADDINGS}. Received: padding={padding!r}")
        if max(stride) > 1 and max(dilation) > 1:
            raise ValueError(
                "`strides > 1` cannot be combined with `dilation_rate > 1` (as in "
                f"keras.layers.Conv2D). Received: strides={strides!r}, "
                f"dilation_rate={dilation_rate!r}"
            )
        check_activation(activation)
        if (isinstance(offset_scale, bool) or not isinstance(offset_scale, (int, float))
                or not 0 < offset_scale < float("inf")):
            raise ValueError(
                f"`offset_scale` must be a positive finite number. Received: "
                f"offset_scale={offset_scale!r}"
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation_rate = dilation_rate
        self.groups = groups
        self.offset_groups = offset_groups
        self.modulated = modulated
        self.use_bias = use_bias
        self.activation = activation
        self.offset_scale = offset_scale
        self.column_budget_bytes = column_budget_bytes
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self._kernel_hw, self._stride_hw, self._dilation_hw = kernel, stride, dilation

    def build(self, input_shape):
        channels = input_channels(input_shape, "DeformableConv2D")
        for name, value in (("groups", self.groups), ("offset_groups", self.offset_groups)):
            if channels % value:
                raise ValueError(
                    f"The input channels must be divisible by `{name}`. Received: {name}={value},"
                    f" input_shape={tuple(input_shape)}"
                )
        kh, kw = self._kernel_hw
        taps = self.offset_groups * kh * kw
        self.offset_conv = keras.layers.Conv2D(
            (3 if self.modulated else 2) * taps, self._kernel_hw, strides=self._stride_hw,
            padding=self.padding.lower(), dilation_rate=self._dilation_hw,
            kernel_initializer="zeros", bias_initializer="zeros", name="offset_conv",
            dtype=self.dtype_policy,
        )
        self.offset_conv.build(tuple(input_shape))
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, channels // self.groups, self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
            )

    def call(self, inputs):
        offsets, mask = self.offsets_and_mask(inputs)
        out = deform_conv2d(inputs, offsets, self.kernel, self.bias, mask,
                            strides=self._stride_hw, padding=self.padding.lower(),
                            dilation_rate=self._dilation_hw,
                            column_budget_bytes=self.column_budget_bytes)
        return keras.activations.get(self.activation)(out)

    def offsets_and_mask(self, inputs):
        """The predicted `offsets [N, Ho, Wo, 2 * offset_groups * kh * kw]` (ordered group,
        kernel row, kernel col, (dy, dx), in input pixels) and `mask [N, Ho, Wo, offset_groups
        * kh * kw]` in (0, 1), or `None` when not modulated."""
        predicted = self.offset_conv(inputs)
        kh, kw = self._kernel_hw
        split = 2 * self.offset_groups * kh * kw
        offsets = predicted[..., :split]
        if self.offset_scale != 1:
            offsets = offsets * self.offset_scale
        if not self.modulated:
            return offsets, None
        return offsets, keras.ops.sigmoid(predicted[..., split:])

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, k, s, d in zip(input_shape[1:3], self._kernel_hw, self._stride_hw,
                                 self._dilation_hw):
            if size is None:
                spatial.append(None)
            elif self.padding.lower() == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - d * (k - 1) - 1) // s + 1)
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "offset_groups": self.offset_groups,
            "modulated": self.modulated,
            "use_bias": self.use_bias,
            "activation": serialize_activation(self.activation),
            "offset_scale": self.offset_scale,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "column_budget_bytes": self.column_budget_bytes,
        }
