"""RoIAlign (Mask R-CNN) as a vectorised TensorFlow op with a hand-written gradient."""

import math
import numbers

import tensorflow as tf

from custom_ops import _sampling
from custom_ops._context import in_xla_context as _in_xla_context
from custom_ops._context import padded_bins as _padded_bins
from custom_ops._context import use_nested_xla

__all__ = ["roi_align", "multiscale_roi_align", "fpn_levels"]


def _check_sampling_ratio(sampling_ratio):
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise ValueError(
            "`sampling_ratio` must be an int (> 0: fixed samples per bin side, <= 0: adaptive). "
            f"Received: sampling_ratio={sampling_ratio!r}"
        )
    return int(sampling_ratio)


@tf.function(jit_compile=True, reduce_retracing=True)
def _tap_gather_xla(flat, indices, weights):
    return _sampling.tap_gather(flat, indices, weights)


@tf.function(jit_compile=True, reduce_retracing=True)
def _tap_scatter_xla(grads, indices, weights, shape_only):
    # XLA needs the segment count as a compile-time constant: read it from a [P, 0] tensor.
    return _sampling.tap_scatter(grads, indices, weights, tf.shape(shape_only)[0])


def _use_xla_kernels(indices):
    """Compile the gather/scatter with XLA unless it is already compiled or being exported.

    XLA fuses the per-tap gathers (and the weighted scatter) into single loops; TensorFlow's
    own kernels materialise every tap (`[T, K * oh * ow, C]`) and are several times slower. A
    SavedModel/TFLite export (save context) and an enclosing XLA cluster use the plain ops.
    The tap count must be static (fixed `sampling_ratio`).
    """
    return indices.shape[0] is not None and use_nested_xla()


def _gather_taps(flat, indices, weights, bins_per_box):
    if not _use_xla_kernels(indices):
        return _sampling.tap_gather(flat, indices, weights)
    bins = tf.shape(indices)[1]
    pad = [[0, 0], [0, _padded_bins(bins, bins_per_box) - bins]]  # padded taps: weight 0
    return _tap_gather_xla(flat, tf.pad(indices, pad), tf.pad(weights, pad))[:bins]


def _scatter_taps(grads, indices, weights, num_pixels, bins_per_box):
    if not _use_xla_kernels(indices):
        return _sampling.tap_scatter(grads, indices, weights, num_pixels)
    bins = tf.shape(indices)[1]
    extra = _padded_bins(bins, bins_per_box) - bins
    pad = [[0, 0], [0, extra]]
    shape_only = tf.zeros(tf.stack([num_pixels, 0]), grads.dtype)
    return _tap_scatter_xla(tf.pad(grads, [[0, extra], [0, 0]]), tf.pad(indices, pad),
                            tf.pad(weights, pad), shape_only)


def _axis_samples(start, length, bins, grid, adaptive):
    """Sample coordinates [K, bins * G] and their averaging factors along one axis.

    `grid` is the per-RoI number of samples per bin side (int32 [K]) when `adaptive`, else a
    Python int. Each bin `p` has samples at `start + p * b + (i + 0.5) * b / grid`, `b =
    length / bins`, for `i < grid`; padded samples (adaptive) get factor 0.
    """
    bin_size = length / bins  # [K]
    if adaptive:
        num = tf.maximum(tf.reduce_max(grid), 1)  # G: the largest grid, others are masked
        grid_f = tf.cast(tf.maximum(grid, 1), start.dtype)[:, None, None]
        steps = tf.range(num)
        scale = tf.where(steps[None, None, :] < grid[:, None, None], 1.0 / grid_f,
                         tf.zeros_like(grid_f))
    else:
        num = grid
        grid_f = tf.cast(grid, start.dtype)
        steps = tf.range(grid)
        scale = None
    # Same operation order as torchvision (start + p * b + ((i + 0.5) * b) / grid), so that
    # samples exactly on the border (y == H) fall on the same side.
    bins_f = tf.cast(tf.range(bins), start.dtype)[None, :, None]
    steps_f = (tf.cast(steps, start.dtype) + 0.5)[None, None, :]
    size = bin_size[:, None, None]
    coords = (start[:, None, None] + bins_f * size) + (steps_f * size) / grid_f
    k = tf.shape(start)[0]
    coords = tf.reshape(coords, [k, -1])
    if scale is not None:
        scale = tf.reshape(tf.broadcast_to(scale, tf.shape(tf.reshape(coords, [k, bins, -1]))),
                           [k, -1])
    else:
        scale = tf.fill(tf.shape(coords), tf.constant(1.0, start.dtype) / float(grid))
    return coords, scale, num


def _plan(boxes, base, heights, widths, output_size, spatial_scale, sampling_ratio, aligned,
          dtype):
    """Flat corner indices/weights of every sample, and the sample grid size per bin side.

    `base` [K] is the flat offset of each box's image; `heights`, `widths` and `spatial_scale`
    are Python numbers or per-box tensors [K, 1] / [K] (multi-level pooling).
    """
    boxes = tf.stop_gradient(tf.cast(boxes, dtype))  # no gradient to boxes (as torchvision)
    offset = 0.5 if aligned else 0.0
    y1 = boxes[:, 0] * spatial_scale - offset
    x1 = boxes[:, 1] * spatial_scale - offset
    roi_h = boxes[:, 2] * spatial_scale - offset - y1
    roi_w = boxes[:, 3] * spatial_scale - offset - x1
    if not aligned:  # legacy Mask R-CNN: force malformed RoIs to be at least 1x1
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    out_h, out_w = output_size
    adaptive = sampling_ratio <= 0
    if adaptive:
        grid_h = tf.maximum(tf.cast(tf.math.ceil(roi_h / out_h), tf.int32), 0)
        grid_w = tf.maximum(tf.cast(tf.math.ceil(roi_w / out_w), tf.int32), 0)
    else:
        grid_h = grid_w = sampling_ratio
    y, y_scale, gh = _axis_samples(y1, roi_h, out_h, grid_h, adaptive)
    x, x_scale, gw = _axis_samples(x1, roi_w, out_w, grid_w, adaptive)
    indices, weights = _sampling.corner_indices_and_weights(
        base, y, x, heights, widths, y_scale, x_scale
    )
    # First and last sample of each axis [K, 4] (y, x, y, x): the sample grid of a box is
    # regular, so these two corners describe it (used by the crop_and_resize gradient).
    corners = tf.stack([y[:, 0], x[:, 0], y[:, -1], x[:, -1]], axis=1)
    return indices, weights, gh, gw, corners


def _use_crop_gradient(dtype, taps, levels):
    """Scatter the gradient with TensorFlow's `CropAndResizeGradImage` kernel?

    For a fixed `sampling_ratio` the samples of a box form a regular `oh * gh` x `ow * gw`
    grid, which is what `crop_and_resize` samples; its fused gradient kernel (CPU and GPU) is
    2-3x faster than an XLA scatter of the same taps. It takes float32 box coordinates, so
    float64 keeps the exact scatter; XLA and exports (no such kernel) keep the plain ops, and
    so do maps of dynamic height or width.
    """
    static = all(f.shape[1] is not None and f.shape[2] is not None for f in levels)
    return dtype == tf.float32 and taps is not None and static and use_nested_xla()


def _fold_edges(grad, axis):
    """Adjoint of replicating the first and last slice of `axis` once (edge padding)."""
    size = grad.shape[axis] - 2
    first, inner, last = tf.split(grad, [1, size, 1], axis=axis)
    if size == 1:
        return first + inner + last
    head, middle, tail = tf.split(inner, [1, size - 2, 1], axis=axis)
    return tf.concat([head + first, middle, tail + last], axis=axis)


def _crop_gradient(dy, corners, box_indices, features, grid, dtype):
    """Gradient of RoIAlign for one map `features` [N, H, W, C] by `CropAndResizeGradImage`.

    torchvision's border rules (samples in `[-1, 0)` read row 0, samples in `(H - 1, H]` read
    row `H - 1`, samples outside `[-1, H]` are zero) are those of `crop_and_resize` (zero
    outside `[0, H' - 1]`) on the map edge-padded by one pixel (`H' = H + 2`): the gradient is
    taken there, with the grid shifted by one pixel, and the padding folded back. Each bin's
    gradient is spread evenly over its `gh * gw` samples.

    Args:
        dy: [K, oh, ow, C] upstream (static oh, ow); corners: [K, 4] first and last sample
            (y, x, y, x) in map pixels; box_indices: [K]; grid: `(gh, gw)` Python ints.
    """
    gh, gw = grid
    oh, ow = dy.shape[1], dy.shape[2]
    k, channels = tf.shape(dy)[0], tf.shape(dy)[3]
    height, width = features.shape[1], features.shape[2]
    samples = tf.broadcast_to(dy[:, :, None, :, None, :] / float(gh * gw),
                              tf.stack([k, oh, gh, ow, gw, channels]))
    samples = tf.reshape(samples, tf.stack([k, oh * gh, ow * gw, channels]))
    # crop_and_resize reads box corner y at y_norm * (H' - 1); shifted by the one-pixel pad.
    extent = tf.constant([height + 1, width + 1, height + 1, width + 1], dtype)
    padded = tf.raw_ops.CropAndResizeGradImage(
        grads=samples, boxes=(corners + 1.0) / extent, box_ind=box_indices,
        image_size=tf.shape(features) + tf.constant([0, 2, 2, 0]), T=dtype)
    padded = tf.ensure_shape(padded, [None, height + 2, width + 2, None])
    return _fold_edges(_fold_edges(padded, 1), 2)


def _align(levels, boxes, level_of_box, box_indices, output_size, spatial_scales,
           sampling_ratio, aligned, custom_gradient):
    """RoIAlign of each box on its level of `levels` (a list of NHWC maps with equal N and C).

    All levels are read as one flat `[sum(N * H_l * W_l), C]` table, so boxes of every level
    are sampled with a single gather (static shapes, no per-level split of the boxes). `H_l`
    and `W_l` may be dynamic (`multiscale_roi_align`).
    """
    dtype = _sampling.compute_dtype(levels[0].dtype)
    out_dtype = levels[0].dtype
    n = tf.shape(levels[0])[0]
    channels = tf.shape(levels[0])[-1]
    dims = [[f.shape[i] if f.shape[i] is not None else tf.shape(f)[i] for i in (1, 2)]
            for f in levels]
    sizes = [n * h * w for h, w in dims]
    if len(levels) == 1:
        heights, widths = dims[0]
        scale = spatial_scales[0]
        base = box_indices * (heights * widths)
    else:
        hs = tf.stack([tf.cast(h, tf.int32) for h, _ in dims])
        ws = tf.stack([tf.cast(w, tf.int32) for _, w in dims])
        starts = tf.concat([[0], tf.math.cumsum(tf.stack(sizes))[:-1]], axis=0)
        heights = tf.gather(hs, level_of_box)[:, None]
        widths = tf.gather(ws, level_of_box)[:, None]
        scale = tf.gather(tf.constant(spatial_scales, dtype), level_of_box)
        base = tf.gather(starts, level_of_box) + box_indices * heights[:, 0] * widths[:, 0]
    indices, weights, gh, gw, corners = _plan(boxes, base, heights, widths, output_size, scale,
                                              sampling_ratio, aligned, dtype)
    k = tf.shape(boxes)[0]
    out_h, out_w = output_size

    taps = 4 * gh * gw if isinstance(gh, int) else None  # static for a fixed sampling_ratio

    def per_bin(t):  # [4, K, oh * gh, ow * gw] -> [4 * gh * gw, K * oh * ow]: taps of each bin
        t = tf.reshape(t, [4, k, out_h, gh, out_w, gw])
        t = tf.reshape(tf.transpose(t, [0, 3, 5, 1, 2, 4]), [-1, k * out_h * out_w])
        # static rows by a reshape: EnsureShape is not a TFLite builtin
        return t if taps is None else tf.reshape(t, [taps, -1])

    indices, weights = per_bin(indices), per_bin(weights)
    bins_per_box = out_h * out_w

    def forward(*feats):
        flat = tf.concat([tf.reshape(tf.cast(f, dtype), [-1, channels]) for f in feats], 0)
        if custom_gradient:
            out = _gather_taps(flat, indices, weights, bins_per_box)  # [K * oh * ow, C]
        else:  # the autodiff reference differentiates the plain ops
            out = _sampling.tap_gather(flat, indices, weights)
        return tf.cast(tf.reshape(out, [k, out_h, out_w, channels]), out_dtype)

    if not custom_gradient:
        return forward(*levels)

    @tf.custom_gradient
    def _op(*feats):
        def grad(dy):
            # decided here: the gradient may be traced apart
            if _use_crop_gradient(dtype, taps, feats):
                dy = tf.cast(dy, dtype)
                if len(feats) == 1:
                    parts, levels_dy = [box_indices], [dy]
                    levels_corners = [corners]
                else:  # one kernel call per level, on the boxes of that level
                    parts = tf.dynamic_partition(box_indices, level_of_box, len(feats))
                    levels_dy = tf.dynamic_partition(dy, level_of_box, len(feats))
                    levels_corners = tf.dynamic_partition(corners, level_of_box, len(feats))
                return [tf.cast(_crop_gradient(d, c, b, f, (gh, gw), dtype), f.dtype)
                        for d, c, b, f in zip(levels_dy, levels_corners, parts, feats)]
            dy = tf.reshape(tf.cast(dy, dtype), [-1, channels])
            d_flat = _scatter_taps(dy, indices, weights, sum(sizes), bins_per_box)
            parts = tf.split(d_flat, tf.stack(sizes), axis=0) if len(feats) > 1 else [d_flat]
            return [tf.cast(tf.reshape(d, tf.shape(f)), f.dtype) for d, f in zip(parts, feats)]

        return forward(*feats), grad

    return _op(*levels)


def _prepare(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio,
             static_size=True):
    features, boxes, box_indices, _ = _sampling.check_roi_inputs(features, boxes, box_indices,
                                                                 static_size)
    output_size = _sampling.check_output_size(output_size)
    spatial_scale = _sampling.check_spatial_scale(spatial_scale)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    # if_unknown=False: without TensorFlow's internal XLA flag, adaptive sampling is not refused.
    if sampling_ratio <= 0 and _in_xla_context(if_unknown=False):
        raise ValueError(
            "roi_align with adaptive sampling (`sampling_ratio <= 0`) has a data-dependent "
            "number of samples per bin and cannot be compiled with XLA or exported to TFLite. "
            "Pass a fixed `sampling_ratio > 0` (e.g. 2). "
            f"Received: sampling_ratio={sampling_ratio}"
        )
    with tf.control_dependencies(_sampling.runtime_checks(features, boxes, box_indices)):
        features = tf.identity(features)
    return features, boxes, box_indices, output_size, spatial_scale, sampling_ratio


def roi_align(features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=-1,
              aligned=True):
    """RoIAlign: average of bilinear samples on a regular grid in each bin of each box.

    The definition is torchvision's `roi_align` (= Detectron2's `ROIAlign`). For box `k` with
    corners scaled by `spatial_scale` and shifted by `-0.5` when `aligned`, bin `(i, j)` of an
    `output_size` grid is the mean of `gh * gw` bilinear samples at the centres of a regular
    `gh x gw` sub-grid. A sample with `y < -1`, `y > H`, `x < -1` or `x > W` contributes zero;
    other samples are clamped into the map, so at the border both corners are the edge pixel.

    `sampling_ratio > 0` uses `gh = gw = sampling_ratio`. `sampling_ratio <= 0` is adaptive:
    `gh = ceil(roi_height / output_height)` (likewise `gw`) per box. Adaptive sampling is
    data-dependent (the sample count depends on the box values): it runs eagerly and in
    `tf.function`, pads every box to the largest grid of the batch (memory grows with it), and
    raises a `ValueError` under XLA (`jit_compile=True`). For XLA and TFLite use a fixed
    `sampling_ratio > 0`; `kcv.layers.RoIAlign` refuses to be exported with adaptive sampling.

    The gradient with respect to `features` is the transposed bilinear scatter (each output
    gradient goes to the four neighbours of each sample with weights `(1 - dy)(1 - dx)`, ...).
    No gradient flows to `boxes` (as in torchvision and Detectron2).

    Speed: with a fixed `sampling_ratio`, outside `jit_compile=True` and outside a SavedModel
    or TFLite export, the gather runs as a small XLA program (one per power-of-two bucket of
    K, compiled on first use) and the float32 gradient is TensorFlow's `CropAndResizeGradImage`
    kernel on the regular sample grid (float64 keeps an exact XLA scatter); see docs/roi.md.

    Args:
        features: float Tensor [N, H, W, C] (NHWC) with static H and W.
        boxes: float Tensor [K, 4] of `[y1, x1, y2, x2]` in the pixel coordinates of the image
            `features` was computed from (multiplied by `spatial_scale` to reach the map).
        box_indices: int Tensor [K], the image of `features` each box belongs to, in `[0, N)`.
        output_size: int or `(height, width)`, the bins per box.
        spatial_scale: feature map size / image size, e.g. `1 / 16`. Default 1.
        sampling_ratio: samples per bin side; `<= 0` (default -1) for adaptive.
        aligned: `True` (default) shifts the box by -0.5 pixel so that sample centres line up
            with pixel centres (Detectron2); `False` is the original Mask R-CNN op, which also
            clamps box height and width to at least 1.

    Returns:
        Tensor [K, output_height, output_width, C] of the dtype of `features` (computed in
        float32 for half types). `K = 0` gives an empty `[0, oh, ow, C]` tensor.

    Raises:
        ValueError / TypeError: wrong ranks, shapes or dtypes, non-positive `output_size` or
            `spatial_scale`, adaptive sampling under XLA.
        tf.errors.InvalidArgumentError: non-finite boxes, `box_indices` outside `[0, N)`.

    Example:
        >>> features = tf.random.normal([2, 50, 68, 256])
        >>> boxes = tf.constant([[16.0, 32.0, 320.0, 480.0]])  # y1, x1, y2, x2 image pixels
        >>> roi_align(features, boxes, [0], 7, spatial_scale=1 / 16, sampling_ratio=2).shape
        TensorShape([1, 7, 7, 256])

    Reference:
        He et al., "Mask R-CNN", ICCV 2017; Wu et al., Detectron2 `ROIAlign(aligned=True)`.
    """
    with tf.name_scope("roi_align"):
        features, boxes, box_indices, output_size, spatial_scale, sampling_ratio = _prepare(
            features, boxes, box_indices, output_size, spatial_scale, sampling_ratio
        )
        return _align([features], boxes, None, box_indices, output_size, [spatial_scale],
                      sampling_ratio, aligned, custom_gradient=True)


def _roi_align_reference(features, boxes, box_indices, output_size, spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True):
    """`roi_align` with TensorFlow's automatic gradient (for tests and the memory benchmark)."""
    with tf.name_scope("roi_align_reference"):
        features, boxes, box_indices, output_size, spatial_scale, sampling_ratio = _prepare(
            features, boxes, box_indices, output_size, spatial_scale, sampling_ratio
        )
        return _align([features], boxes, None, box_indices, output_size, [spatial_scale],
                      sampling_ratio, aligned, custom_gradient=False)


def fpn_levels(boxes, min_level, max_level, canonical_size=224.0, canonical_level=4):
    """FPN level of each box: `floor(canonical_level + log2(sqrt(h * w) / canonical_size))`.

    Clipped to `[min_level, max_level]`; `h * w` is the box area in image pixels (negative areas
    of inverted boxes count as 0, hence the lowest level). Like torchvision's `LevelMapper`, a
    `1e-6` is added inside the `floor` against round-off at exact powers of two.

    Returns:
        int32 Tensor [K] of levels in `[min_level, max_level]`.

    Reference:
        Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, eq. (1).
    """
    boxes = tf.cast(boxes, tf.float32)
    area = tf.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0.0)
    k = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_size) / tf.math.log(2.0)
                 + 1e-6)
    k = tf.clip_by_value(k, float(min_level), float(max_level))  # -inf (area 0) -> min_level
    return tf.cast(k, tf.int32)


def multiscale_roi_align(features, boxes, box_indices, output_size, spatial_scales,
                         sampling_ratio=2, aligned=True, canonical_size=224.0,
                         canonical_level=4, levels=None):
    """RoIAlign of each box on its FPN level (`fpn_levels`), results in box order.

    The maps may have dynamic height and width (unlike `roi_align`'s single map).

    Args:
        features: list of float Tensors [N, H_l, W_l, C], finest first (e.g. P2..P5).
        boxes, box_indices, output_size, sampling_ratio, aligned: as `roi_align`.
        spatial_scales: one per level, powers of two with consecutive exponents, finest first
            (e.g. `[1/4, 1/8, 1/16, 1/32]` is levels 2..5).
        canonical_size, canonical_level: a box of `canonical_size` pixels maps to
            `canonical_level` (224 and 4 in the FPN paper).
        levels: optional int Tensor [K], the index into `features` of each box's map
            (0 = the finest), instead of `fpn_levels` (which computes in float32): e.g.
            torchvision's `LevelMapper` in the boxes' own dtype.

    Returns:
        Tensor [K, output_height, output_width, C]; the gradient flows to every level.

    Example:
        >>> maps = [tf.random.normal([1, 64 // s, 64 // s, 8]) for s in (4, 8, 16, 32)]
        >>> multiscale_roi_align(maps, [[0.0, 0.0, 32.0, 48.0]], [0], 7,
        ...                      [1 / 4, 1 / 8, 1 / 16, 1 / 32]).shape
        TensorShape([1, 7, 7, 8])

    Reference:
        Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
    """
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(
            f"`features` must be a non-empty list of NHWC maps. Received: {type(features)}"
        )
    scales = list(spatial_scales) if isinstance(spatial_scales, (list, tuple)) else None
    if scales is None or len(scales) != len(features):
        raise ValueError(
            "`spatial_scales` must be a list with one scale per feature map. "
            f"Received: spatial_scales={spatial_scales!r} for {len(features)} maps"
        )
    scales = [_sampling.check_spatial_scale(s) for s in scales]
    scale_levels = [-math.log2(s) for s in scales]
    if any(abs(lv - round(lv)) > 1e-6 for lv in scale_levels) or any(
        round(b) - round(a) != 1 for a, b in zip(scale_levels, scale_levels[1:])
    ):
        raise ValueError(
            "`spatial_scales` must be powers of two, finest first, one level apart "
            f"(e.g. [0.25, 0.125]). Received: spatial_scales={spatial_scales!r}"
        )
    with tf.name_scope("multiscale_roi_align"):
        maps = []
        for f in features:
            f, boxes, box_indices, output_size, _, sampling_ratio = _prepare(
                f, boxes, box_indices, output_size, 1.0, sampling_ratio, static_size=False
            )
            maps.append(f)
        if len({f.dtype for f in maps}) > 1 or len({f.shape[-1] for f in maps}) > 1:
            raise ValueError(
                "`features` must share dtype and channel count. Received: "
                f"{[(f.dtype.name, tuple(f.shape)) for f in maps]}"
            )
        if levels is None:
            min_level = round(scale_levels[0])
            level = fpn_levels(boxes, min_level, round(scale_levels[-1]), canonical_size,
                               canonical_level) - min_level
        else:
            level = tf.cast(levels, tf.int32)
        return _align(maps, boxes, level, box_indices, output_size, scales, sampling_ratio,
                      aligned, custom_gradient=True)
