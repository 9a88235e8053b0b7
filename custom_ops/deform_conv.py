"""Deformable convolution v1 and v2 (modulated) on NHWC tensors, in pure TensorFlow.

Semantics are torchvision's `deform_conv2d` (the mmcv / DCNv2 CUDA definition), moved to NHWC:
output pixel `(ho, wo)`, kernel tap `(i, j)` and offset group `g` read the input at

    y = ho * stride_h - pad_top  + i * dilation_h + offsets[n, ho, wo, g, i, j, 0]
    x = wo * stride_w - pad_left + j * dilation_w + offsets[n, ho, wo, g, i, j, 1]

by bilinear interpolation: a sample with `y <= -1`, `y >= H`, `x <= -1` or `x >= W` is zero;
otherwise each of its four corners that falls outside the image contributes zero (the image is
zero-padded, never clamped). The sample is multiplied by `mask[n, ho, wo, g, i, j]` (v2) and the
samples are contracted with the kernel as a (grouped) convolution.

Implementation: the zero-padded input is rearranged once into "2x2 neighbourhoods"
`[N * (H + 1) * (W + 1) * G, 4 * C / G]`, so each sample is a single `tf.gather` of one row
(its four corners) and a weighted sum; the sampled columns `[N * Ho * Wo, kh * kw * C]` then go
through one matmul (a batched matmul for `groups > 1`). The gradient is hand-written
(`tf.custom_gradient`) and recomputes the columns in the backward pass, so the columns tensor is
never kept alive between forward and backward; the input gradient is the transposed gather
(`tf.math.unsorted_segment_sum`). Everything is a TFLite builtin and compiles with XLA.

Speed: outside an XLA cluster and outside a SavedModel export (`custom_ops._context`), the
sampling side (bilinear positions and weights; the corner gathers fused with their weighted
sum; in the backward pass the offset/mask gradients and the input-gradient scatter) runs as
three nested `jit_compile=True` programs that read the zero-padded input directly (no
neighbourhood copy, no `[R, 4, Cg]` corners tensor); the matmuls stay TensorFlow's. Exported
graphs and callers already under XLA use the plain ops above. Both paths are the same formulas.
In float32 with a static input size (same conditions), the forward columns are 1x1
`crop_and_resize` samples of the zero-padded input and the backward pass's input-gradient scatter
is TensorFlow's `CropAndResizeGradImage` kernel ("crop kernels" below); float64 keeps the exact
XLA programs (crop_and_resize computes in float32).
"""

import collections
import numbers

import tensorflow as tf

from custom_ops._context import use_nested_xla
from custom_ops._sampling import compute_dtype as _compute_dtype

__all__ = ["deform_conv2d"]


# --------------------------------------------------------------------------- argument checks


def _pair(value, name, minimum):
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = None
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)
        or min(pair) < minimum
    ):
        kind = "positive" if minimum > 0 else "non-negative"
        raise ValueError(
            f"`{name}` must be a {kind} int or a pair of {kind} ints (height, width). "
            f"Received: {name}={value!r}"
        )
    return int(pair[0]), int(pair[1])


def _padding(padding, size, kernel, stride, dilation):
    """Returns `(pad_before, output_size)` along one axis; `size` may be None (unknown)."""
    extent = dilation * (kernel - 1) + 1
    if padding == "valid":
        padding = 0
    if padding == "same":
        if size is None:
            return None, None
        out = -(-size // stride)
        total = max((out - 1) * stride + extent - size, 0)
        return total // 2, out
    if size is None:
        return padding, None
    return padding, (size + 2 * padding - extent) // stride + 1


def _check_padding(padding):
    if isinstance(padding, str):
        if padding.lower() not in ("same", "valid"):
            raise ValueError(
                "`padding` must be an int, a pair of ints (pad_h, pad_w), 'same' or 'valid'. "
                f"Received: padding={padding!r}"
            )
        return padding.lower(), padding.lower()
    return _pair(padding, "padding", 0)


def _static(tensor, axis):
    return tf.compat.dimension_value(tensor.shape[axis])


def _dim(tensor, axis):
    value = _static(tensor, axis)
    return value if value is not None else tf.shape(tensor)[axis]


_Static = collections.namedtuple("_Static", [
    "kh", "kw", "taps", "cout", "channels", "groups", "offset_groups", "strides", "dilation",
    "pad_top", "pad_left"])
_Static.__doc__ = """The Python-int part of `_Geometry` the kernels need: hashable, so it can key
the trace cache of the nested XLA functions."""


class _Geometry:
    """Static description of one deformable convolution (shapes, strides, padding, groups)."""

    def __init__(self, inputs, offsets, kernel, mask, strides, padding, dilation_rate):
        for name, t, rank in (("inputs", inputs, 4), ("offsets", offsets, 4),
                              ("kernel", kernel, 4)):
            if t.shape.rank is not None and t.shape.rank != rank:
                raise ValueError(
                    f"`{name}` must be a rank-{rank} tensor. Received: {name}.shape={t.shape}"
                )
        if mask is not None and mask.shape.rank is not None and mask.shape.rank != 4:
            raise ValueError(
                f"`mask` must be a rank-4 tensor [N, H_out, W_out, offset_groups * kh * kw]. "
                f"Received: mask.shape={mask.shape}"
            )
        if not kernel.shape.is_fully_defined():
            raise ValueError(
                f"`kernel` must have a static shape [kh, kw, C_in / groups, C_out]. "
                f"Received: kernel.shape={kernel.shape}"
            )
        self.strides = _pair(strides, "strides", 1)
        self.dilation = _pair(dilation_rate, "dilation_rate", 1)
        padding = _check_padding(padding)
        kh, kw, cig, cout = (int(d) for d in kernel.shape)
        self.kh, self.kw, self.taps, self.cout = kh, kw, kh * kw, cout
        channels = _static(inputs, 3)
        if channels is None:
            raise ValueError(
                f"`inputs` must have a static channel count. Received: inputs.shape={inputs.shape}"
            )
        if cig < 1 or channels % cig:
            raise ValueError(
                "The input channels must be a multiple of `kernel.shape[2]` (C_in / groups). "
                f"Received: inputs.shape={inputs.shape}, kernel.shape={kernel.shape}"
            )
        self.channels, self.groups = channels, channels // cig
        if cout % self.groups:
            raise ValueError(
                f"The output channels `kernel.shape[3]` must be divisible by groups={self.groups} "
                f"(groups = C_in / kernel.shape[2]). Received: kernel.shape={kernel.shape}, "
                f"inputs.shape={inputs.shape}"
            )
        offset_channels = _static(offsets, 3)
        if offset_channels is None or offset_channels % (2 * self.taps) or offset_channels == 0:
            raise ValueError(
                f"`offsets` must have 2 * offset_groups * kh * kw channels (a multiple of "
                f"2 * {kh} * {kw} = {2 * self.taps}). Received: offsets.shape={offsets.shape}"
            )
        self.offset_groups = offset_channels // (2 * self.taps)
        if channels % self.offset_groups:
            raise ValueError(
                f"The input channels ({channels}) must be divisible by offset_groups="
                f"{self.offset_groups} (read from `offsets`, which has {offset_channels} = "
                f"2 * offset_groups * {kh} * {kw} channels). Received: offsets.shape={offsets.shape}"
            )
        if mask is not None:
            expected = self.offset_groups * self.taps
            if _static(mask, 3) != expected:
                raise ValueError(
                    f"`mask` must have offset_groups * kh * kw = {self.offset_groups} * {kh} * {kw}"
                    f" = {expected} channels. Received: mask.shape={mask.shape}"
                )
        self.height, self.width = _static(inputs, 1), _static(inputs, 2)
        self.pad_top, out_h = _padding(padding[0], self.height, kh, self.strides[0],
                                       self.dilation[0])
        self.pad_left, out_w = _padding(padding[1], self.width, kw, self.strides[1],
                                        self.dilation[1])
        if self.pad_top is None or self.pad_left is None:
            raise ValueError(
                f"padding='same' needs static input height and width. "
                f"Received: inputs.shape={inputs.shape}"
            )
        for name, out in (("height", out_h), ("width", out_w)):
            if out is not None and out < 1:
                raise ValueError(
                    f"The output {name} is {out} < 1 for inputs.shape={inputs.shape}, "
                    f"kernel {kh}x{kw}, strides={self.strides}, padding={padding}, "
                    f"dilation_rate={self.dilation}."
                )
        self.out_h, self.out_w = out_h, out_w
        self.static = _Static(kh, kw, self.taps, cout, channels, self.groups, self.offset_groups,
                              self.strides, self.dilation, self.pad_top, self.pad_left)
        for name, t, channels_desc in (
            ("offsets", offsets, f"2 * {self.offset_groups} * {kh} * {kw}"),
            ("mask", mask, f"{self.offset_groups} * {kh} * {kw}"),
        ):
            if t is None:
                continue
            got = (_static(t, 1), _static(t, 2))
            want = (out_h, out_w)
            if any(g is not None and w is not None and g != w for g, w in zip(got, want)):
                raise ValueError(
                    f"`{name}` must have shape [N, H_out, W_out, {channels_desc}] with "
                    f"(H_out, W_out) = {want} given inputs.shape={inputs.shape}, kernel "
                    f"{kh}x{kw}, strides={self.strides}, padding={padding}, dilation_rate="
                    f"{self.dilation}. Received: {name}.shape={t.shape}"
                )
            batch, in_batch = _static(t, 0), _static(inputs, 0)
            if batch is not None and in_batch is not None and batch != in_batch:
                raise ValueError(
                    f"`{name}` must have the batch size of `inputs` ({in_batch}). "
                    f"Received: {name}.shape={t.shape}"
                )


def _runtime_checks(geo, inputs, offsets, mask):
    """tf.debugging checks for what is only known at run time (dynamic batch or spatial size)."""
    checks = []
    for name, t in (("offsets", offsets), ("mask", mask)):
        if t is None:
            continue
        if _static(t, 0) is None or _static(inputs, 0) is None:
            checks.append(tf.debugging.assert_equal(
                tf.shape(t)[0], tf.shape(inputs)[0],
                message=f"`{name}` must have the batch size of `inputs`"))
        if geo.out_h is None or geo.out_w is None or None in (_static(t, 1), _static(t, 2)):
            out_h = (tf.shape(inputs)[1] + 2 * geo.pad_top
                     - geo.dilation[0] * (geo.kh - 1) - 1) // geo.strides[0] + 1
            out_w = (tf.shape(inputs)[2] + 2 * geo.pad_left
                     - geo.dilation[1] * (geo.kw - 1) - 1) // geo.strides[1] + 1
            checks.append(tf.debugging.assert_equal(
                tf.shape(t)[1:3], tf.stack([out_h, out_w]),
                message=f"`{name}` must have spatial size (H_out, W_out) given by the strides, "
                        "padding and dilation_rate"))
    return checks


# --------------------------------------------------------------------------- sampling


def _neighbourhoods(geo, inputs):
    """The zero-padded input as rows of 2x2 neighbourhoods.

    Row `((n * (H + 1) + r) * (W + 1) + c) * G + g` holds, for offset group `g`, the pixels at
    (r - 1, c - 1), (r - 1, c), (r, c - 1), (r, c) of the input (zero outside): `[rows, 4, Cg]`.
    """
    g = geo.offset_groups
    cg = geo.channels // g
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    corners = tf.stack(
        [padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]],
        axis=3,
    )  # [N, H + 1, W + 1, 4, C]
    corners = tf.reshape(corners, [-1, 4, g, cg])
    return tf.reshape(tf.transpose(corners, [0, 2, 1, 3]), [-1, 4, cg])


def _fold_neighbourhoods(geo, grads, batch, height, width):
    """Adjoint of `_neighbourhoods`: `[rows, 4, Cg]` back to `[N, H, W, C]`."""
    g = geo.offset_groups
    cg = geo.channels // g
    grads = tf.reshape(grads, [batch, height + 1, width + 1, g, 4, cg])
    grads = tf.reshape(tf.transpose(grads, [0, 1, 2, 4, 3, 5]),
                       [batch, height + 1, width + 1, 4, geo.channels])
    padding = ([[0, 1], [0, 1]], [[0, 1], [1, 0]], [[1, 0], [0, 1]], [[1, 0], [1, 0]])
    padded = tf.add_n([
        tf.pad(grads[:, :, :, k], [[0, 0], *pad, [0, 0]]) for k, pad in enumerate(padding)
    ])  # [N, H + 2, W + 2, C], zero-padded frame included
    return padded[:, 1:-1, 1:-1]


def _positions(geo, offsets, batch, dtype, shift=0):
    """Sample rows and columns `[N, Ho, Wo, kh * kw, G]` (plus `shift`, a Python int)."""
    out_h, out_w = tf.shape(offsets)[1], tf.shape(offsets)[2]
    # [N, Ho, Wo, G, K, 2] -> [N, Ho, Wo, K, G, 2]
    delta = tf.transpose(tf.reshape(tf.cast(offsets, dtype),
                                    [batch, out_h, out_w, geo.offset_groups, geo.taps, 2]),
                         [0, 1, 2, 4, 3, 5])
    tap_y = tf.cast(tf.repeat(tf.range(geo.kh) * geo.dilation[0], geo.kw), dtype)
    tap_x = tf.cast(tf.tile(tf.range(geo.kw) * geo.dilation[1], [geo.kh]), dtype)
    base_y = tf.cast(tf.range(out_h) * geo.strides[0] - geo.pad_top + shift, dtype)
    base_x = tf.cast(tf.range(out_w) * geo.strides[1] - geo.pad_left + shift, dtype)
    y = base_y[:, None, None, None] + tap_y[None, None, :, None] + delta[..., 0]
    x = base_x[None, :, None, None] + tap_x[None, None, :, None] + delta[..., 1]
    return y, x


def _sampling(geo, offsets, batch, height, width, dtype, padded=False):
    """Row indices into the neighbourhoods, bilinear weights and their derivatives.

    Returns `(rows [R], weights [R, 4], d_weights_dy [R, 4], d_weights_dx [R, 4])` with
    `R = N * Ho * Wo * kh * kw * G` ordered (n, ho, wo, kernel row, kernel col, offset group).
    With `padded=True` the rows index the top-left corner in the input zero-padded by one pixel
    and read as `[N * (H + 2) * (W + 2) * G, Cg]` (see `_padded_rows`) instead.
    """
    g = geo.offset_groups
    y, x = _positions(geo, offsets, batch, dtype)
    h_f = tf.cast(height, dtype)
    w_f = tf.cast(width, dtype)
    valid = tf.cast((y > -1) & (y < h_f) & (x > -1) & (x < w_f), dtype)
    y0 = tf.floor(y)
    x0 = tf.floor(x)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    row = tf.clip_by_value(tf.cast(y0, tf.int32) + 1, 0, height)
    col = tf.clip_by_value(tf.cast(x0, tf.int32) + 1, 0, width)
    n = tf.range(batch)[:, None, None, None, None]
    grid_h, grid_w = (height + 2, width + 2) if padded else (height + 1, width + 1)
    rows = ((n * grid_h + row) * grid_w + col) * g + tf.range(g)
    weights = tf.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1) * valid[..., None]
    d_dy = tf.stack([-hx, -lx, hx, lx], axis=-1) * valid[..., None]
    d_dx = tf.stack([-hy, hy, -ly, ly], axis=-1) * valid[..., None]
    return (tf.reshape(rows, [-1]), tf.reshape(weights, [-1, 4]), tf.reshape(d_dy, [-1, 4]),
            tf.reshape(d_dx, [-1, 4]))


def _mask_rows(geo, mask, dtype):
    """`mask` [N, Ho, Wo, G * K] ordered (group, tap) as `[R, 1]` ordered (tap, group)."""
    m = tf.reshape(tf.cast(mask, dtype), [-1, geo.offset_groups, geo.taps])
    return tf.reshape(tf.transpose(m, [0, 2, 1]), [-1, 1])


def _grouped_kernel(geo, kernel):
    """HWIO kernel as `[groups, kh * kw * C_in / groups, C_out / groups]`."""
    cig = geo.channels // geo.groups
    k = tf.reshape(kernel, [geo.taps, cig, geo.groups, geo.cout // geo.groups])
    return tf.reshape(tf.transpose(k, [2, 0, 1, 3]), [geo.groups, geo.taps * cig, -1])


def _to_groups(geo, columns):
    """`[M, K * C]` (tap-major) -> `[groups, M, K * C_in / groups]`."""
    cig = geo.channels // geo.groups
    c = tf.reshape(columns, [-1, geo.taps, geo.groups, cig])
    return tf.reshape(tf.transpose(c, [2, 0, 1, 3]), [geo.groups, -1, geo.taps * cig])


def _from_groups(geo, grouped):
    """`[groups, M, K * C_in / groups]` -> `[M, K * C]` (tap-major)."""
    cig = geo.channels // geo.groups
    c = tf.reshape(grouped, [geo.groups, -1, geo.taps, cig])
    return tf.reshape(tf.transpose(c, [1, 2, 0, 3]), [-1, geo.taps * geo.channels])


def _matmul_kernel(geo, columns, kernel):
    """`columns [M, K * C] @ kernel` as a (grouped) convolution: `[M, C_out]`."""
    if geo.groups == 1:
        return tf.matmul(columns, tf.reshape(kernel, [geo.taps * geo.channels, geo.cout]))
    out = tf.matmul(_to_groups(geo, columns), _grouped_kernel(geo, kernel))
    return tf.reshape(tf.transpose(out, [1, 0, 2]), [-1, geo.cout])


def _columns(geo, neighbourhoods, rows, weights, mask_rows):
    """Sampled columns `[M, K * C]`, and the gathered corners `[R, 4, Cg]`."""
    corners = tf.gather(neighbourhoods, rows)
    w = weights if mask_rows is None else weights * mask_rows
    cols = tf.matmul(w[:, None, :], corners)  # [R, 1, Cg]: batched matmul beats mul + sum
    return tf.reshape(cols, [-1, geo.taps * geo.channels]), corners


def _forward(geo, x, offsets, kernel, bias, mask, dtype):
    batch, height, width = _dim(x, 0), _dim(x, 1), _dim(x, 2)
    out_h, out_w = _dim(offsets, 1), _dim(offsets, 2)
    rows, weights, _, _ = _sampling(geo, offsets, batch, height, width, dtype)
    mask_rows = None if mask is None else _mask_rows(geo, mask, dtype)
    cols, _ = _columns(geo, _neighbourhoods(geo, x), rows, weights, mask_rows)
    out = _matmul_kernel(geo, cols, kernel)
    if bias is not None:
        out = out + bias
    return tf.reshape(out, [batch, out_h, out_w, geo.cout])


def _kernel_grads(geo, cols, kernel, dy):
    """`(grad_kernel, grad_cols)` of `cols @ kernel` (grouped) given the upstream `dy`."""
    if geo.groups == 1:
        grad_kernel = tf.matmul(cols, dy, transpose_a=True)
        grad_cols = tf.matmul(dy, tf.reshape(kernel, [-1, geo.cout]), transpose_b=True)
    else:
        cog = geo.cout // geo.groups
        dy_groups = tf.transpose(tf.reshape(dy, [-1, geo.groups, cog]), [1, 0, 2])
        grad_kernel = tf.matmul(_to_groups(geo, cols), dy_groups, transpose_a=True)
        cig = geo.channels // geo.groups
        grad_kernel = tf.reshape(grad_kernel, [geo.groups, geo.taps, cig, cog])
        grad_kernel = tf.transpose(grad_kernel, [1, 2, 0, 3])
        grad_cols = _from_groups(
            geo, tf.matmul(dy_groups, _grouped_kernel(geo, kernel), transpose_b=True))
    return tf.reshape(grad_kernel, kernel.shape), grad_cols


def _sample_grads(geo, grad_cols, corners, rows, weights, d_dy, d_dx, mask_rows, num_rows,
                  offsets_shape, mask_shape):
    """Gradients of the sampled columns for the neighbourhood rows, the offsets and the mask.

    `grad_cols [M, K * C]` is the gradient of the (masked) columns; `corners [R, 4, Cg]` the
    gathered neighbourhoods. Returns `(grad_neighbourhoods [num_rows, 4, Cg], grad_offsets,
    grad_mask or None)`.
    """
    cg = geo.channels // geo.offset_groups
    grad_cols = tf.reshape(grad_cols, [-1, cg])  # [R, Cg], upstream of the masked sample
    # d(sample) / d(corner) contracted with the upstream: [R, 4].
    grad_corner_w = tf.einsum("rkc,rc->rk", corners, grad_cols)
    if mask_rows is not None:
        grad_mask = tf.reduce_sum(grad_corner_w * weights, axis=1)
        grad_mask = tf.reshape(grad_mask, [-1, geo.taps, geo.offset_groups])
        grad_mask = tf.reshape(tf.transpose(grad_mask, [0, 2, 1]), mask_shape)
        grad_corner_w = grad_corner_w * mask_rows
        grad_cols = grad_cols * mask_rows
    else:
        grad_mask = None
    grad_y = tf.reduce_sum(grad_corner_w * d_dy, axis=1)
    grad_x = tf.reduce_sum(grad_corner_w * d_dx, axis=1)
    grad_offsets = tf.reshape(tf.stack([grad_y, grad_x], axis=-1),
                              [-1, geo.taps, geo.offset_groups, 2])
    grad_offsets = tf.reshape(tf.transpose(grad_offsets, [0, 2, 1, 3]), offsets_shape)
    # Inputs: scatter each sample's upstream into its four corners (adjoint of the gather).
    grad_nb = tf.math.unsorted_segment_sum(
        tf.matmul(weights[:, :, None], grad_cols[:, None, :]), rows, num_segments=num_rows)
    return grad_nb, grad_offsets, grad_mask


def _backward(geo, x, offsets, kernel, mask, upstream, dtype):
    """Gradients for (inputs, offsets, kernel, mask), recomputing the columns (plain ops)."""
    batch, height, width = _dim(x, 0), _dim(x, 1), _dim(x, 2)
    rows, weights, d_dy, d_dx = _sampling(geo, offsets, batch, height, width, dtype)
    mask_rows = None if mask is None else _mask_rows(geo, mask, dtype)
    neighbourhoods = _neighbourhoods(geo, x)
    cols, corners = _columns(geo, neighbourhoods, rows, weights, mask_rows)
    grad_kernel, grad_cols = _kernel_grads(geo, cols, kernel, tf.reshape(upstream, [-1, geo.cout]))
    del cols
    grad_nb, grad_offsets, grad_mask = _sample_grads(
        geo, grad_cols, corners, rows, weights, d_dy, d_dx, mask_rows,
        tf.shape(neighbourhoods)[0], tf.shape(offsets), None if mask is None else tf.shape(mask))
    grad_x_in = _fold_neighbourhoods(geo, grad_nb, batch, height, width)
    return grad_x_in, grad_offsets, grad_kernel, grad_mask


# --------------------------------------------------------------------------- nested XLA kernels
# Outside an XLA cluster and outside a SavedModel export, the sampling side of the op runs as
# three small XLA programs: `_xla_sampling` (bilinear rows, weights and their position
# derivatives), `_xla_columns` (corner gathers fused with their weighted sum) and
# `_xla_sample_grads` (offset/mask gradients and the input-gradient scatter). The forward pass
# runs the first two; the backward pass runs all three (recomputing the columns). XLA fuses the
# gather with its weighted sum, so the `[R, 4, Cg]` corners tensor (4x the columns) is never
# materialised, and its scatter is a single loop. The matmuls stay TensorFlow's (oneDNN on CPU,
# cuBLAS on GPU), which are faster than XLA's. Same formulas as the plain path above.


def _padded_rows(geo, x):
    """The input zero-padded by one pixel as rows `[N * (H + 2) * (W + 2) * G, Cg]`, and the
    row steps from a top-left corner to its four corners (TL, TR, BL, BR)."""
    g = geo.offset_groups
    width = _dim(x, 2)
    padded = tf.reshape(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]),
                        [-1, geo.channels // g])
    return padded, tf.stack([0, g, (width + 2) * g, (width + 3) * g])


def _xla_sampling_core(x, offsets, mask, static):
    batch, height, width = _dim(x, 0), _dim(x, 1), _dim(x, 2)
    rows, weights, d_dy, d_dx = _sampling(static, offsets, batch, height, width, x.dtype,
                                          padded=True)
    mask_rows = None if mask is None else _mask_rows(static, mask, x.dtype)
    return rows, weights, d_dy, d_dx, mask_rows


def _xla_columns_core(x, rows, weights, mask_rows, static):
    padded, steps = _padded_rows(static, x)
    w = weights if mask_rows is None else weights * mask_rows
    # One gather per corner, each fused by XLA into the weighted sum (a single [R, 4] gather
    # reduced over its axis 1 compiles to a loop about 15x slower on CPU).
    cols = tf.add_n([w[:, k, None] * tf.gather(padded, rows + steps[k]) for k in range(4)])
    return tf.reshape(cols, [-1, static.taps * static.channels])


def _xla_sample_grads_core(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, static,
                           scatter=True):
    """Gradients for the input, the offsets (`[R, 2]`) and the mask (`[R]`, or None).

    With `scatter=False` the first output is instead the upstream of the unmasked samples
    (`[R, Cg]`), for the caller to scatter into the input.
    """
    cg = static.channels // static.offset_groups
    padded, steps = _padded_rows(static, x)
    corner_rows = rows[:, None] + steps
    grad_cols = tf.reshape(grad_cols, [-1, cg])  # [R, Cg], upstream of the masked sample
    # d(sample) / d(corner weight) contracted with the upstream: [R, 4] (gather fused).
    grad_corner_w = tf.reduce_sum(tf.gather(padded, corner_rows) * grad_cols[:, None, :], -1)
    grad_mask = None
    if mask_rows is not None:
        grad_mask = tf.reduce_sum(grad_corner_w * weights, axis=1)
        grad_corner_w = grad_corner_w * mask_rows
        weights = weights * mask_rows
    grad_offsets = tf.stack([tf.reduce_sum(grad_corner_w * d_dy, axis=1),
                             tf.reduce_sum(grad_corner_w * d_dx, axis=1)], axis=-1)
    if not scatter:
        grad_samples = grad_cols if mask_rows is None else grad_cols * mask_rows
        return (grad_samples, grad_offsets) + (() if mask_rows is None else (grad_mask,))
    # Inputs: scatter each sample's upstream into its four corners (adjoint of the gather).
    grad_padded = tf.math.unsorted_segment_sum(
        tf.reshape(weights[:, :, None] * grad_cols[:, None, :], [-1, cg]),
        tf.reshape(corner_rows, [-1]), num_segments=tf.shape(padded)[0])
    grad_padded = tf.reshape(grad_padded, [_dim(x, 0), _dim(x, 1) + 2, _dim(x, 2) + 2, -1])
    grad_x = grad_padded[:, 1:-1, 1:-1]
    return (grad_x, grad_offsets) if mask_rows is None else (grad_x, grad_offsets, grad_mask)


@tf.function(jit_compile=True, reduce_retracing=True)
def _xla_sampling(x, offsets, mask, static):
    return _xla_sampling_core(x, offsets, mask, static)


@tf.function(jit_compile=True, reduce_retracing=True)
def _xla_columns(x, rows, weights, mask_rows, static):
    return _xla_columns_core(x, rows, weights, mask_rows, static)


@tf.function(jit_compile=True, reduce_retracing=True)
def _xla_sample_grads(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, static, scatter=True):
    return _xla_sample_grads_core(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, static,
                                  scatter)


def _forward_xla(geo, x, offsets, kernel, bias, mask):
    """The output and the sampled columns `[M, K * C]`."""
    rows, weights, _, _, mask_rows = _xla_sampling(x, offsets, mask, geo.static)
    cols = _xla_columns(x, rows, weights, mask_rows, geo.static)
    out = _matmul_kernel(geo, cols, kernel)
    if bias is not None:
        out = out + bias
    return tf.reshape(out, [_dim(x, 0), _dim(offsets, 1), _dim(offsets, 2), geo.cout]), cols


def _backward_xla(geo, x, offsets, kernel, mask, upstream, cols=None):
    """Gradients for (inputs, offsets, kernel, mask); `cols`: the forward pass's columns if
    kept (`column_budget_bytes`), else recomputed."""
    rows, weights, d_dy, d_dx, mask_rows = _xla_sampling(x, offsets, mask, geo.static)
    if cols is None:
        cols = _xla_columns(x, rows, weights, mask_rows, geo.static)
    grad_kernel, grad_cols = _kernel_grads(geo, cols, kernel, tf.reshape(upstream, [-1, geo.cout]))
    del cols
    grads = _xla_sample_grads(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, geo.static)
    grad_offsets, grad_mask = _channel_order(geo, grads[1], grads[2] if mask is not None else None,
                                             offsets, mask)
    return grads[0], grad_offsets, grad_kernel, grad_mask


def _channel_order(geo, grad_offsets, grad_mask, offsets, mask):
    """`[R, 2]` / `[R]` ordered (n, ho, wo, tap, group) -> the (group, tap) channel order."""
    grad_offsets = tf.reshape(grad_offsets, [-1, geo.taps, geo.offset_groups, 2])
    grad_offsets = tf.reshape(tf.transpose(grad_offsets, [0, 2, 1, 3]), tf.shape(offsets))
    if mask is not None:
        grad_mask = tf.reshape(grad_mask, [-1, geo.taps, geo.offset_groups])
        grad_mask = tf.reshape(tf.transpose(grad_mask, [0, 2, 1]), tf.shape(mask))
    return grad_offsets, grad_mask


# --------------------------------------------------------------------------- crop kernels
# float32 with a static input size, outside an XLA cluster and outside an export: a bilinear
# sample of the zero-padded input is a 1x1 `tf.image.crop_and_resize` of a box of zero size,
# so TensorFlow's fused CropAndResize kernel gives the forward pass's columns, and its
# gradient kernel CropAndResizeGradImage (CPU and GPU) replaces the XLA scatter of the input
# gradient, the slowest step of `_backward_xla` (measured in BENCHMARKS.md). The offset and
# mask gradients and the recomputed columns stay the nested XLA programs above. The input is
# padded with zeros to `P` rows, one above and at least one below, with `P - 1` a power of
# two: crop_and_resize reads a box corner at `y_norm * (P - 1)`, so `y_norm = y / (P - 1)`
# gives back `y` exactly, and the zero rows reproduce torchvision's zero-padded corners and
# its `-1 < y < H` rule (samples outside read or receive only zero padding).


def _use_crop_kernels(geo, dtype):
    return (dtype == tf.float32 and geo.height is not None and geo.width is not None
            and use_nested_xla())


def _crop_extent(size):
    """`P - 1`: the smallest power of two >= size + 1 (rows 0 and size + 1 are zero)."""
    return 1 << int(size).bit_length()


def _crop_plan(geo, offsets, batch, dtype):
    """Sample positions in the padded input (`y + 1`, `x + 1`), ordered (n, ho, wo, tap,
    group) as `[R]`, and their image in `[N * G]` (`[R]`)."""
    g = geo.offset_groups
    y, x = _positions(geo, offsets, batch, dtype, shift=1)
    image = tf.broadcast_to(tf.range(batch)[:, None, None, None, None] * g + tf.range(g),
                            tf.shape(y))
    return tf.reshape(y, [-1]), tf.reshape(x, [-1]), tf.reshape(image, [-1])


def _crop_images(geo, x):
    """`[N, H, W, C]` -> zero-padded `[N * G, P_h + 1, P_w + 1, C / G]` (rows 1..H are x)."""
    g = geo.offset_groups
    if g > 1:
        x = tf.reshape(x, [-1, geo.height, geo.width, g, geo.channels // g])
        x = tf.reshape(tf.transpose(x, [0, 3, 1, 2, 4]), [-1, geo.height, geo.width,
                                                          geo.channels // g])
    return tf.pad(x, [[0, 0], [1, _crop_extent(geo.height) - geo.height],
                      [1, _crop_extent(geo.width) - geo.width], [0, 0]])


def _crop_boxes(geo, y, x):
    """Boxes of zero size at padded positions `y`, `x` ([R]): exact in crop_and_resize."""
    ey, ex = float(_crop_extent(geo.height)), float(_crop_extent(geo.width))
    return tf.stack([y / ey, x / ex, y / ey, x / ex], axis=1)


def _crop_columns(geo, images, y, x, image, mask_rows):
    """Sampled columns `[M, K * C]` from 1x1 crops of `images` at padded positions `y`, `x`."""
    samples = tf.image.crop_and_resize(images, _crop_boxes(geo, y, x), image, [1, 1])[:, 0, 0]
    cols = samples if mask_rows is None else samples * mask_rows
    return tf.reshape(cols, [-1, geo.taps * geo.channels])


def _forward_crop(geo, x, offsets, kernel, bias, mask, dtype):
    """The output and the sampled columns `[M, K * C]`."""
    y, xs, image = _crop_plan(geo, offsets, _dim(x, 0), dtype)
    mask_rows = None if mask is None else _mask_rows(geo, mask, dtype)
    cols = _crop_columns(geo, _crop_images(geo, x), y, xs, image, mask_rows)
    out = _matmul_kernel(geo, cols, kernel)
    if bias is not None:
        out = out + bias
    return tf.reshape(out, [_dim(x, 0), _dim(offsets, 1), _dim(offsets, 2), geo.cout]), cols


def _backward_crop(geo, x, offsets, kernel, mask, upstream, cols=None):
    """The nested-XLA backward pass with the input-gradient scatter done by
    `CropAndResizeGradImage` (the XLA scatter is the slowest part of `_backward_xla`);
    `cols` as in `_backward_xla`."""
    batch = _dim(x, 0)
    rows, weights, d_dy, d_dx, mask_rows = _xla_sampling(x, offsets, mask, geo.static)
    if cols is None:
        cols = _xla_columns(x, rows, weights, mask_rows, geo.static)
    grad_kernel, grad_cols = _kernel_grads(geo, cols, kernel, tf.reshape(upstream, [-1, geo.cout]))
    del cols
    grads = _xla_sample_grads(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, geo.static,
                              scatter=False)
    y, xs, image = _crop_plan(geo, offsets, batch, x.dtype)
    cg = geo.channels // geo.offset_groups
    size = tf.stack([batch * geo.offset_groups, _crop_extent(geo.height) + 1,
                     _crop_extent(geo.width) + 1, cg])
    padded = tf.raw_ops.CropAndResizeGradImage(
        grads=grads[0][:, None, None, :], boxes=_crop_boxes(geo, y, xs), box_ind=image,
        image_size=size, T=x.dtype)
    grad_x = padded[:, 1:geo.height + 1, 1:geo.width + 1]  # cut out of the padded frame
    if geo.offset_groups > 1:
        grad_x = tf.reshape(grad_x, [batch, geo.offset_groups, geo.height, geo.width, cg])
        grad_x = tf.transpose(grad_x, [0, 2, 3, 1, 4])
    grad_x = tf.reshape(grad_x, [batch, geo.height, geo.width, geo.channels])
    grad_offsets, grad_mask = _channel_order(geo, grads[1], grads[2] if mask is not None else None,
                                             offsets, mask)
    return grad_x, grad_offsets, grad_kernel, grad_mask


def _prepare(inputs, offsets, kernel, bias, mask):
    inputs = tf.convert_to_tensor(inputs)
    if not inputs.dtype.is_floating:
        raise TypeError(f"`inputs` must be a float tensor. Received: inputs.dtype={inputs.dtype}")
    offsets = tf.convert_to_tensor(offsets)
    kernel = tf.convert_to_tensor(kernel)
    bias = None if bias is None else tf.convert_to_tensor(bias)
    mask = None if mask is None else tf.convert_to_tensor(mask)
    for name, t in (("offsets", offsets), ("kernel", kernel), ("bias", bias), ("mask", mask)):
        if t is not None and not t.dtype.is_floating:
            raise TypeError(f"`{name}` must be a float tensor. Received: {name}.dtype={t.dtype}")
    if bias is not None and (bias.shape.rank != 1 or bias.shape[0] != kernel.shape[-1]):
        raise ValueError(
            f"`bias` must have shape [C_out] = [{kernel.shape[-1]}]. Received: bias.shape="
            f"{bias.shape}"
        )
    return inputs, offsets, kernel, bias, mask


# --------------------------------------------------------------------------- public op


def deform_conv2d(inputs, offsets, kernel, bias=None, mask=None, strides=1, padding=0,
                  dilation_rate=1, column_budget_bytes=0):
    """Deformable 2-D convolution: v1 (`mask=None`) and v2 (modulated, with `mask`).

    Each kernel tap reads the input at its regular grid position shifted by a learned offset,
    with bilinear interpolation; in v2 each sample is also multiplied by a learned mask value.
    Numerically identical to `torchvision.ops.deform_conv2d` (NCHW, OIHW) after transposing to
    NHWC / HWIO. With zero offsets and a mask of ones it equals `tf.nn.conv2d`.

    Sampling: the tap `(i, j)` of output pixel `(ho, wo)` in offset group `g` reads
    `y = ho * stride_h - pad_top + i * dilation_h + dy`, `x = wo * stride_w - pad_left +
    j * dilation_w + dx`. A sample with `y <= -1`, `y >= H`, `x <= -1` or `x >= W` is zero;
    otherwise it is bilinear with every corner outside the image read as zero.

    Args:
        inputs: float Tensor `[N, H, W, C_in]` (static `C_in`).
        offsets: float Tensor `[N, H_out, W_out, 2 * offset_groups * kh * kw]`, last axis
            ordered (offset group, kernel row, kernel col, (dy, dx)), in input pixels.
            `offset_groups` is read from this shape; input channels are split into
            `offset_groups` contiguous blocks, each displaced by its own offsets.
        kernel: float Tensor `[kh, kw, C_in / groups, C_out]` (HWIO, static shape);
            `groups = C_in / kernel.shape[2]`, as in `tf.nn.conv2d` and torchvision.
        bias: optional float Tensor `[C_out]`.
        mask: optional float Tensor `[N, H_out, W_out, offset_groups * kh * kw]`, ordered
            (offset group, kernel row, kernel col) - the modulation of DCNv2 (usually a sigmoid).
            `None` (default) gives DCNv1.
        strides: int or `(stride_h, stride_w)`, default 1.
        padding: int or `(pad_h, pad_w)` of zeros on each side (default 0), or `"valid"` (0) or
            `"same"` (TensorFlow's rule: output `ceil(H / stride)`, extra pad at the bottom/right).
        dilation_rate: int or `(dilation_h, dilation_w)`, default 1.
        column_budget_bytes: non-negative int. When the sampled columns
            (`N * H_out * W_out * kh * kw * C_in` values of the compute dtype; static shapes)
            take at most this many bytes, the forward pass keeps them for the backward pass
            instead of the backward pass sampling them again: faster, but they stay in memory
            between the passes. 0 (default) never keeps them. Only outside `jit_compile=True`
            (XLA plans its own program there) and outside SavedModel export.

    Returns:
        Tensor `[N, H_out, W_out, C_out]` with the dtype of `inputs` (computed in float32 for
        float16/bfloat16 inputs, float64 for float64), where
        `H_out = (H + 2 * pad_h - dilation_h * (kh - 1) - 1) // stride_h + 1` (same for `W`).

    Raises:
        ValueError: wrong ranks, offsets channels not `2 * offset_groups * kh * kw`, a mask
            that does not match, offsets/mask spatial sizes other than the output size, channels
            not divisible by `groups` or `offset_groups`, bad strides/padding/dilation.
        TypeError: non-float tensors.

    Gradients for `inputs`, `offsets`, `kernel`, `bias` and `mask` are hand-written: the
    backward pass recomputes the sampled columns instead of keeping them from the forward pass
    (unless `column_budget_bytes` allows keeping them).
    The gradient with respect to an offset is that of the bilinear formula (zero when the
    sample lies outside, as in torchvision).

    Example:
        >>> x = tf.random.normal([2, 16, 16, 8])
        >>> kernel = tf.random.normal([3, 3, 8, 16])
        >>> offsets = tf.zeros([2, 16, 16, 2 * 3 * 3])
        >>> mask = tf.ones([2, 16, 16, 3 * 3])
        >>> y = deform_conv2d(x, offsets, kernel, mask=mask, padding=1)  # == conv2d "SAME"
        >>> y.shape
        TensorShape([2, 16, 16, 16])

    Reference:
        Dai et al., "Deformable Convolutional Networks", ICCV 2017 (arXiv:1703.06211);
        Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019
        (arXiv:1811.11168).
    """
    with tf.name_scope("deform_conv2d"):
        inputs, offsets, kernel, bias, mask = _prepare(inputs, offsets, kernel, bias, mask)
        geo = _Geometry(inputs, offsets, kernel, mask, strides, padding, dilation_rate)
        check_column_budget(column_budget_bytes)
        checks = _runtime_checks(geo, inputs, offsets, mask)
        with tf.control_dependencies(checks):
            inputs = tf.identity(inputs) if checks else inputs
        return _deform_conv2d(geo, inputs, offsets, kernel, bias, mask, column_budget_bytes)


def check_column_budget(column_budget_bytes):
    """Raises ValueError unless `column_budget_bytes` is a non-negative int (not a bool)."""
    if (not isinstance(column_budget_bytes, numbers.Integral)
            or isinstance(column_budget_bytes, bool) or column_budget_bytes < 0):
        raise ValueError(
            "`column_budget_bytes` must be a non-negative int. Received: "
            f"column_budget_bytes={column_budget_bytes!r}"
        )


def _columns_fit(geo, inputs, dtype, budget):
    """True when the sampled columns have a static size of at most `budget` bytes."""
    batch = _static(inputs, 0)
    if not budget or None in (batch, geo.out_h, geo.out_w):
        return False
    return batch * geo.out_h * geo.out_w * geo.taps * geo.channels * dtype.size <= budget


def _deform_conv2d(geo, inputs, offsets, kernel, bias, mask, column_budget_bytes=0):
    out_dtype = inputs.dtype
    dtype = _compute_dtype(out_dtype)
    keep = _columns_fit(geo, inputs, dtype, column_budget_bytes)
    args = [inputs, offsets, kernel] + [t for t in (bias, mask) if t is not None]
    has_bias, has_mask = bias is not None, mask is not None

    def unpack(values):
        x, off, k = values[:3]
        rest = list(values[3:])
        b = rest.pop(0) if has_bias else None
        m = rest.pop(0) if has_mask else None
        return x, off, k, b, m

    @tf.custom_gradient
    def op(*values):
        # stop_gradient: an eager tape would otherwise also record the ops inside and keep
        # their inputs (the big columns) alive until the tape is released.
        x, off, k, b, m = (None if t is None else tf.stop_gradient(tf.cast(t, dtype))
                           for t in unpack(values))
        cols = None
        if _use_crop_kernels(geo, dtype):
            out, cols = _forward_crop(geo, x, off, k, b, m, dtype)
        elif use_nested_xla():
            out, cols = _forward_xla(geo, x, off, k, b, m)
        else:
            out = _forward(geo, x, off, k, b, m, dtype)
        kept = cols if keep else None  # captured by `grad` only when within the budget
        del cols

        def grad(upstream):
            # Recompute from the inputs; the control dependency on `upstream` keeps graph
            # optimisers from merging this recomputation with the forward pass.
            with tf.control_dependencies([upstream]):
                x_, off_, k_ = (tf.identity(tf.cast(t, dtype)) for t in values[:3])
            m_ = tf.cast(values[-1], dtype) if has_mask else None
            up = tf.cast(upstream, dtype)
            if _use_crop_kernels(geo, dtype):  # decided again: the gradient may be traced apart
                gx, goff, gk, gm = _backward_crop(geo, x_, off_, k_, m_, up, kept)
            elif use_nested_xla():
                gx, goff, gk, gm = _backward_xla(geo, x_, off_, k_, m_, up, kept)
            else:
                gx, goff, gk, gm = _backward(geo, x_, off_, k_, m_, up, dtype)
            grads = [gx, goff, gk]
            if has_bias:
                grads.append(tf.reduce_sum(tf.reshape(up, [-1, geo.cout]), axis=0))
            if has_mask:
                grads.append(gm)
            return [tf.cast(g, v.dtype) for g, v in zip(grads, values)]

        return tf.cast(out, out_dtype), grad

    return op(*args)


# --------------------------------------------------------------------------- autodiff reference


def _deform_conv2d_reference(inputs, offsets, kernel, bias=None, mask=None, strides=1,
                             padding=0, dilation_rate=1):
    """Plain-autodiff deformable convolution: four per-corner `gather_nd`s with explicit
    in-image tests (torchvision's `bilinear_interpolate` written literally), `tf.einsum` with
    the kernel. Used by the tests and the benchmark; same signature as `deform_conv2d`.
    """
    with tf.name_scope("deform_conv2d_reference"):
        inputs, offsets, kernel, bias, mask = _prepare(inputs, offsets, kernel, bias, mask)
        geo = _Geometry(inputs, offsets, kernel, mask, strides, padding, dilation_rate)
        dtype = _compute_dtype(inputs.dtype)
        x = tf.cast(inputs, dtype)
        batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        out_h, out_w = tf.shape(offsets)[1], tf.shape(offsets)[2]
        g, taps, cg = geo.offset_groups, geo.taps, geo.channels // geo.offset_groups
        delta = tf.reshape(tf.cast(offsets, dtype), [batch, out_h, out_w, g, taps, 2])
        ii = tf.cast(tf.repeat(tf.range(geo.kh), geo.kw) * geo.dilation[0], dtype)
        jj = tf.cast(tf.tile(tf.range(geo.kw), [geo.kh]) * geo.dilation[1], dtype)
        y = (tf.cast(tf.range(out_h) * geo.strides[0] - geo.pad_top, dtype)[:, None, None, None]
             + ii + delta[..., 0])  # [N, Ho, Wo, G, K]
        x_pos = (tf.cast(tf.range(out_w) * geo.strides[1] - geo.pad_left, dtype)[None, :, None,
                                                                                  None]
                 + jj + delta[..., 1])
        h_f, w_f = tf.cast(height, dtype), tf.cast(width, dtype)
        inside = (y > -1) & (y < h_f) & (x_pos > -1) & (x_pos < w_f)
        y_low = tf.cast(tf.floor(y), tf.int32)
        x_low = tf.cast(tf.floor(x_pos), tf.int32)
        ly = y - tf.floor(y)
        lx = x_pos - tf.floor(x_pos)
        grouped = tf.reshape(x, [batch, height, width, g, cg])
        n_idx = tf.broadcast_to(tf.range(batch)[:, None, None, None, None], tf.shape(y_low))
        g_idx = tf.broadcast_to(tf.range(g)[:, None], tf.shape(y_low))
        sample = tf.zeros(tf.concat([tf.shape(y_low), [cg]], 0), dtype)
        for dy_, dx_, wy, wx in ((0, 0, 1 - ly, 1 - lx), (0, 1, 1 - ly, lx),
                                 (1, 0, ly, 1 - lx), (1, 1, ly, lx)):
            yy, xx = y_low + dy_, x_low + dx_
            ok = inside & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            idx = tf.stack([n_idx, tf.clip_by_value(yy, 0, height - 1),
                            tf.clip_by_value(xx, 0, width - 1), g_idx], axis=-1)
            value = tf.gather_nd(grouped, idx)  # [N, Ho, Wo, G, K, Cg]
            sample += value * (wy * wx * tf.cast(ok, dtype))[..., None]
        if mask is not None:
            sample *= tf.reshape(tf.cast(mask, dtype), [batch, out_h, out_w, g, taps])[..., None]
        # [N, Ho, Wo, K, C] with channel index = g * Cg + c.
        sample = tf.reshape(tf.transpose(sample, [0, 1, 2, 4, 3, 5]),
                            [batch, out_h, out_w, taps, geo.groups, -1])
        cig = geo.channels // geo.groups
        k = tf.reshape(tf.cast(kernel, dtype), [taps, cig, geo.groups, geo.cout // geo.groups])
        out = tf.einsum("nhwkgc,kcgo->nhwgo", sample, k)
        out = tf.reshape(out, [batch, out_h, out_w, geo.cout])
        if bias is not None:
            out += tf.cast(bias, dtype)
        return tf.cast(out, inputs.dtype)
