"""Hybrid dilated convolution (HDC): a stack of dilated convolutions without gridding."""

import math

import keras

from kcv.layers._checks import (
    base_block_config,
    build_chain,
    call_chain,
    check_positive_int,
    check_rates,
    input_channels,
    set_block_args,
    unit_kwargs,
)
from kcv.layers.conv_blocks import ConvBNAct


def _uncovered_offsets(rates, kernel_size):
    """Offsets (along one axis, within the stack's span) that no path through the stack reads.

    A k-tap convolution with dilation r reads offsets `r * {-(k-1)/2, ..., (k-1)/2}` (k odd);
    the stack reads every sum of one offset per layer.
    """
    half = (kernel_size - 1) // 2
    reach = {0}
    for r in rates:
        reach = {o + r * t for o in reach for t in range(-half, kernel_size - half)}
    lo, hi = min(reach), max(reach)
    return sorted(set(range(lo, hi + 1)) - reach)


@keras.saving.register_keras_serializable(package="kcv")
class HybridDilatedConv(keras.layers.Layer):
    """Hybrid Dilated Convolution: a stack of conv-norm-activation units with dilation rates
    chosen so that their combined receptive field has no holes.

    Stacking convolutions with the same dilation r (or rates with a common factor r > 1, such as
    (2, 4, 6)) samples the input on a grid of step r: neighbouring outputs are computed from
    disjoint sets of pixels and local information is lost ("gridding"). HDC uses rates without
    a common factor, in a sawtooth such as (1, 2, 5) or (1, 2, 5, 1, 2, 5), so that the last
    layer sees a contiguous square of the input. The rates are checked when the layer is
    created: a common factor > 1, or any offset inside the stack's span that no path through
    the stack reaches (e.g. (1, 5) with 3 x 3 kernels misses offsets 2 and 3), is refused.

    Args:
        filters: channels of every convolution and of the output.
        rates: dilation rates, one convolution per rate. Default (1, 2, 5).
        kernel_size: odd kernel size of every convolution. Default 3.
        norm, norm_groups, kernel_initializer: as in `ConvBNAct`; defaults "batch", 32,
            "he_normal".
        activation: activation after every convolution. Default "relu".
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[N, H, W, C]`. Output shape: `[N, H, W, filters]`.

    Example:
        >>> x = keras.random.normal((1, 32, 32, 16))
        >>> HybridDilatedConv(16, rates=(1, 2, 5))(x).shape
        TensorShape([1, 32, 32, 16])

    Reference:
        Wang et al., "Understanding Convolution for Semantic Segmentation", WACV 2018.
    """

    def __init__(self, filters, rates=(1, 2, 5), kernel_size=3, norm="batch", norm_groups=32,
                 activation="relu", kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd. Received: kernel_size={kernel_size}")
        check_rates(rates)
        common = math.gcd(*rates)
        if common > 1:
            raise ValueError(
                f"`rates` must not share a common factor > 1 (gridding): with every rate a "
                f"multiple of {common}, the stack only reads input pixels on a grid of step "
                f"{common}, so neighbouring outputs come from disjoint pixel sets and local "
                f"information is lost. Use rates such as (1, 2, 5). Received: rates={rates!r}")
        holes = _uncovered_offsets(rates, kernel_size) if kernel_size > 1 else []
        if holes:
            raise ValueError(
                f"`rates` leave holes in the receptive field (gridding): no path through the "
                f"stack reads offsets {holes[:6]} along each axis with kernel_size="
                f"{kernel_size}, so neighbouring outputs still miss the same input pixels. "
                f"Keep each rate within the span the other rates cover, e.g. (1, 2, 5). "
                f"Received: rates={rates!r}")
        set_block_args(self, norm, norm_groups, activation, kernel_initializer)
        self.filters = filters
        self.rates = rates
        self.kernel_size = kernel_size

    def build(self, input_shape):
        input_channels(input_shape, "HybridDilatedConv")
        self.convs = [
            ConvBNAct(self.filters, kernel_size=self.kernel_size, dilation_rate=r,
                      **unit_kwargs(self, name=f"conv_{i}"))
            for i, r in enumerate(self.rates)]
        build_chain(self.convs, input_shape)

    def call(self, inputs, training=None):
        return call_chain(self.convs, inputs, training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            **base_block_config(self),
            "filters": self.filters,
            "rates": list(self.rates),
            "kernel_size": self.kernel_size,
        }
