"""RoIPool (Fast R-CNN max pooling over quantized bins) as a vectorised TensorFlow op.

The bins of different boxes have different, data-dependent sizes. To stay static-shaped (XLA,
TFLite) and vectorised, the op builds a 2-D sparse table of the feature map: level `(a, b)` holds
the maximum (and its first position in row-major order) over every `2^a x 2^b` window. Any bin
`[h0, h1) x [w0, w1)` is then the maximum of four overlapping windows of level
`(floor(log2(h1 - h0)), floor(log2(w1 - w0)))`, read with one gather.
"""

import tensorflow as tf

from custom_ops import _sampling

__all__ = ["roi_pool"]


def _round_half_away(x):
    """C's `round()` (torchvision uses it); `tf.round` rounds half to even."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _floor_log2_table(size):
    return tf.constant([max(n, 1).bit_length() - 1 for n in range(size + 1)], tf.int32)


def _bin_edges(start, end, bins, size):
    """Clamped integer bin edges [K, bins] along one axis, Fast R-CNN's floor/ceil rule."""
    length = tf.maximum(end - start + 1.0, 1.0)  # inclusive pixel count of the rounded box
    bin_size = length / bins
    p = tf.cast(tf.range(bins), start.dtype)[None, :]
    lo = tf.floor(p * bin_size[:, None]) + start[:, None]
    hi = tf.math.ceil((p + 1.0) * bin_size[:, None]) + start[:, None]
    lo = tf.cast(tf.clip_by_value(lo, 0.0, float(size)), tf.int32)
    hi = tf.cast(tf.clip_by_value(hi, 0.0, float(size)), tf.int32)
    return lo, hi


def _window_starts(lo, hi, size):
    """Level `floor(log2(hi - lo))` and the two window starts covering `[lo, hi)`."""
    n = tf.maximum(hi - lo, 1)
    level = tf.gather(_floor_log2_table(size), n)
    first = tf.minimum(lo, size - 1)
    window = tf.gather(tf.constant([1 << a for a in range(size.bit_length())], tf.int32), level)
    second = tf.clip_by_value(hi - window, 0, size - 1)
    return level, first, second


def _combine(a, b):
    """Max of two (value, first index) pairs; ties keep the smaller (row-major first) index."""
    (va, ia), (vb, ib) = a, b
    value = tf.maximum(va, vb)
    if ia is None:
        return value, None
    index = tf.where(va > vb, ia, tf.where(vb > va, ib, tf.minimum(ia, ib)))
    return value, index


def _shift(x, step, axis):
    """`x` moved by `step` towards the origin along `axis`; the tail is never read."""
    if x is None:
        return None
    size = x.shape[axis]
    head = tf.gather(x, tf.range(step, size), axis=axis)
    tail = tf.gather(x, tf.range(size - step, size), axis=axis)
    return tf.concat([head, tail], axis=axis)


def _sparse_table(features, with_index):
    """Stacked levels [La * Lb * N * H * W, C] of window maxima (and first argmax)."""
    n, height, width, channels = features.shape
    flat_pos = None
    if with_index:
        n_dyn = tf.shape(features)[0]
        flat_pos = tf.reshape(tf.range(n_dyn * height * width), [n_dyn, height, width, 1])
        flat_pos = tf.broadcast_to(flat_pos, tf.shape(features))
    rows = [(features, flat_pos)]
    for a in range(1, height.bit_length()):
        v, i = rows[-1]
        s = 1 << (a - 1)
        rows.append(_combine((v, i), (_shift(v, s, 1), _shift(i, s, 1))))
    values, indices = [], []
    for v, i in rows:
        level = [(v, i)]
        for b in range(1, width.bit_length()):
            lv, li = level[-1]
            s = 1 << (b - 1)
            level.append(_combine((lv, li), (_shift(lv, s, 2), _shift(li, s, 2))))
        values += [lv for lv, _ in level]
        indices += [li for _, li in level]
    c = tf.shape(features)[-1]
    values = tf.reshape(tf.stack(values), [-1, c])
    indices = tf.reshape(tf.stack(indices), [-1, c]) if with_index else None
    return values, indices, len(rows), width.bit_length()


def _pool(features, boxes, box_indices, output_size, spatial_scale, with_index):
    """RoI max pooling: values [K, oh, ow, C] and, if asked, global argmax positions (or -1)."""
    _, height, width, _ = features.shape
    dtype = _sampling.compute_dtype(features.dtype)
    boxes = tf.stop_gradient(tf.cast(boxes, dtype))
    y1, x1, y2, x2 = tf.unstack(_round_half_away(boxes * spatial_scale), axis=1)
    out_h, out_w = output_size
    h_lo, h_hi = _bin_edges(y1, y2, out_h, height)  # [K, oh]
    w_lo, w_hi = _bin_edges(x1, x2, out_w, width)  # [K, ow]
    empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]  # [K, oh, ow]
    la, r0, r1 = _window_starts(h_lo, h_hi, height)
    lb, c0, c1 = _window_starts(w_lo, w_hi, width)
    values, indices, _, num_b = _sparse_table(features, with_index)
    n = tf.shape(features)[0]
    plane = height * width
    level = (la[:, :, None] * num_b + lb[:, None, :]) * n + box_indices[:, None, None]  # [K,oh,ow]
    rows = tf.stack([r0, r0, r1, r1])[:, :, :, None] * width  # [4, K, oh, 1]
    cols = tf.stack([c0, c1, c0, c1])[:, :, None, :]  # [4, K, 1, ow]
    flat = level[None] * plane + rows + cols  # [4, K, oh, ow]
    corners = [(tf.gather(values, flat[j]),
                tf.gather(indices, flat[j]) if with_index else None) for j in range(4)]
    value, index = _combine(_combine(corners[0], corners[1]), _combine(corners[2], corners[3]))
    value = tf.where(empty[..., None], tf.zeros_like(value), value)
    if with_index:
        index = tf.where(empty[..., None], -tf.ones_like(index), index)
    return value, index


def _prepare(features, boxes, box_indices, output_size, spatial_scale):
    features, boxes, box_indices, _ = _sampling.check_roi_inputs(features, boxes, box_indices)
    output_size = _sampling.check_output_size(output_size)
    spatial_scale = _sampling.check_spatial_scale(spatial_scale)
    with tf.control_dependencies(_sampling.runtime_checks(features, boxes, box_indices)):
        features = tf.identity(features)
    return features, boxes, box_indices, output_size, spatial_scale


def roi_pool(features, boxes, box_indices, output_size, spatial_scale=1.0):
    """RoIPool: max over the quantized bins of each box (Fast R-CNN), as torchvision defines it.

    Box corners are scaled by `spatial_scale` and rounded half away from zero (C `round`); the
    box covers `max(y2 - y1 + 1, 1)` rows (inclusive end), likewise columns. Bin `i` of
    `output_height` spans rows `[floor(i * bh), ceil((i + 1) * bh))` from the box start,
    `bh = rows / output_height`, clamped into the map; bins may overlap. An empty bin (entirely
    outside the map) gives 0. Ties resolve to the first maximum in row-major order.

    The gradient routes each output gradient to the argmax of its bin (summed where bins and
    boxes share an argmax); empty bins pass none. No gradient flows to `boxes`.

    Runs eagerly, in `tf.function`, under XLA and in TFLite with builtin ops. It builds a 2-D
    sparse table of window maxima, `(floor(log2 H) + 1) * (floor(log2 W) + 1)` copies of
    `features` (plus int32 argmax tables when a gradient is recorded), so memory is
    `O(N H W C log H log W)` while each bin costs four reads.

    Args:
        features: float Tensor [N, H, W, C] (NHWC) with static H and W.
        boxes: float Tensor [K, 4] of `[y1, x1, y2, x2]` in image pixels.
        box_indices: int Tensor [K] in `[0, N)`: the image of each box.
        output_size: int or `(height, width)`, bins per box.
        spatial_scale: feature map size / image size, e.g. `1 / 16`. Default 1.

    Returns:
        Tensor [K, output_height, output_width, C] of the dtype of `features`.

    Raises:
        ValueError / TypeError: wrong ranks, shapes or dtypes, non-positive `output_size` or
            `spatial_scale`.
        tf.errors.InvalidArgumentError: non-finite boxes, `box_indices` outside `[0, N)`.

    Example:
        >>> features = tf.random.normal([1, 38, 50, 512])
        >>> roi_pool(features, [[0.0, 0.0, 320.0, 480.0]], [0], 7, spatial_scale=1 / 16).shape
        TensorShape([1, 7, 7, 512])

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015.
    """
    with tf.name_scope("roi_pool"):
        features, boxes, box_indices, output_size, spatial_scale = _prepare(
            features, boxes, box_indices, output_size, spatial_scale
        )
        shape = tf.shape(features)
        size = tf.reduce_prod(shape)

        @tf.custom_gradient
        def _op(feats):
            value, index = _pool(feats, boxes, box_indices, output_size, spatial_scale, True)

            def grad(dy):
                c = tf.shape(dy)[-1]
                channel = tf.range(c)
                ids = tf.where(index < 0, size, index * c + channel)
                d = tf.math.unsorted_segment_sum(tf.reshape(dy, [-1]), tf.reshape(ids, [-1]),
                                                 size + 1)
                return tf.reshape(d[:-1], shape)

            return value, grad

        return _op(features)


def _roi_pool_reference(features, boxes, box_indices, output_size, spatial_scale=1.0):
    """`roi_pool` with TensorFlow's automatic gradient (for tests)."""
    with tf.name_scope("roi_pool_reference"):
        features, boxes, box_indices, output_size, spatial_scale = _prepare(
            features, boxes, box_indices, output_size, spatial_scale
        )
        return _pool(features, boxes, box_indices, output_size, spatial_scale, False)[0]
