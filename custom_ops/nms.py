"""Non-maximum suppression: hard, class-aware, soft (Bodla), weighted and DIoU NMS.

One greedy algorithm, blocked so that most of the work is tensor-sized: the boxes are sorted by
score and cut into tiles of up to 512. For each tile, in order, (1) its boxes are tested against
the boxes kept so far, tile by tile (a `[tile, tile]` pair test each), and (2) the suppression
inside the tile is solved by a fixed-point iteration on its `[tile, tile]` overlap matrix
(`keep_j = alive_j and no kept i < j overlaps j`, repeated until it stops changing; its unique
fixed point is the greedy answer, reached after at most "longest suppression chain" steps).
Kept boxes are appended to a compact buffer, so step (1) only ever looks at kept boxes. This is
the scheme of tensorflow/models' `sorted_non_max_suppression_padded`, with an explicit keep
mask (no "suppressed boxes become zeros" trick, so boxes may have any coordinates) and an exact
fixed point for any threshold.

Everything is `tf.while_loop` over static-shape slices, so it runs eagerly, in `tf.function`,
under XLA (`jit_compile=True`, with `pad_to_max_output_size=True`) and converts to TFLite with
builtin ops only (WHILE, SLICE, TOPK_V2, GATHER, ...).

Conventions shared by every function here (those of `tf.image.non_max_suppression` and
torchvision's `nms`):
- boxes are `[y1, x1, y2, x2]`; each box's corners are sorted first (as `tf.image` does), so
  boxes given as `[x1, y1, x2, y2]` by mistake give the same answer (IoU does not change when
  every box is transposed) and a box with `y2 < y1` is the same rectangle as its flip;
- a box is suppressed when its IoU with a kept box is greater than `iou_threshold`
  (strictly: IoU exactly at the threshold is kept); zero-area boxes overlap nothing;
- only boxes with `score > score_threshold` take part; NaN scores count as `-inf`, so a box
  with a NaN score is never returned and never suppresses another (no error);
- results are sorted by descending score, ties broken by the lower index.
"""

import numbers

import tensorflow as tf

from custom_ops._context import padded_bins as _padded_bins
from custom_ops._context import use_nested_xla

__all__ = ["nms", "batched_nms", "diou_nms", "weighted_nms", "soft_nms"]

_TILE = 512


@tf.function(jit_compile=True, reduce_retracing=True)
def _compiled(core, static, *tensors):
    """Runs `core(*tensors, *static)` as one XLA program (`core`, `static`: trace keys)."""
    return core(*tensors, *static)


def _run(core, static, tensors, bucket_axis_1=()):
    """Runs a while-loop core compiled with XLA, unless that is impossible or unwanted.

    TensorFlow's executor runs each of the core's small ops separately, inside a `while_loop`
    of hundreds of steps; XLA fuses each step into a few loops and is 3-6x faster. We compile
    when the caller is neither itself under XLA (the core then joins the caller's program) nor
    writing a SavedModel (which should stay portable plain TF; TFLite export goes through it).
    The TFLite converter also accepts the compiled function (it inlines it, builtins only).
    When the length is not fixed by the graph (eager calls, or an unknown static length),
    inputs listed in `bucket_axis_1` are zero-padded on axis 1 to a power of two times the tile
    size, so a varying number of boxes compiles O(log N) programs; outputs are cut back.
    """
    if not use_nested_xla():
        return core(*tensors, *static)
    if bucket_axis_1 and (tf.executing_eagerly() or tensors[bucket_axis_1[0]].shape[1] is None):
        length = tf.shape(tensors[bucket_axis_1[0]])[1]
        bucket = _padded_bins(length, static[-1])  # static[-1]: the tile size
        tensors = list(tensors)
        for k in bucket_axis_1:
            pad = [[0, 0], [0, bucket - length]] + [[0, 0]] * (tensors[k].shape.rank - 2)
            tensors[k] = tf.pad(tensors[k], pad)
        out = _compiled(core, static, *tensors)
        return tuple(o[:, :length] if o.shape.rank >= 2 else o for o in out)
    return _compiled(core, static, *tensors)


def _same_shapes(new, old):
    """Restores the static shapes of while-loop variables (dynamic batch slices lose them)."""
    for n, o in zip(new, old):
        n.set_shape(o.shape)
    return new


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_threshold(value, name, low=0.0, high=1.0):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not low <= float(value) <= high:
            raise ValueError(f"`{name}` must be in [{low}, {high}]. Received: {name}={value!r}")
        return float(value)
    value = tf.convert_to_tensor(value, tf.float32)
    if value.shape.rank not in (0, None):
        raise ValueError(f"`{name}` must be a scalar. Received: {name}.shape={value.shape}")
    return value


def _check_max_output_size(max_output_size, pad):
    if max_output_size is None:
        if pad:
            raise ValueError(
                "`pad_to_max_output_size=True` needs `max_output_size` (a Python int) to fix the "
                "output size. Received: max_output_size=None"
            )
        return None
    if isinstance(max_output_size, numbers.Integral) and not isinstance(max_output_size, bool):
        if max_output_size < 0:
            raise ValueError(
                f"`max_output_size` must be >= 0. Received: max_output_size={max_output_size}"
            )
        return int(max_output_size)
    if pad:
        raise ValueError(
            "With `pad_to_max_output_size=True`, `max_output_size` must be a Python int. "
            f"Received: max_output_size={max_output_size!r}"
        )
    return tf.cast(max_output_size, tf.int32)


def _runtime_checks(values):
    checks = []
    for name, value, low, high in values:
        if isinstance(value, tf.Tensor):
            checks.append(tf.debugging.assert_greater_equal(
                value, low, message=f"`{name}` must be >= {low}"))
            if high is not None:
                checks.append(tf.debugging.assert_less_equal(
                    value, high, message=f"`{name}` must be <= {high}"))
    return checks


def _prepare(boxes, scores, score_threshold, pad, classes=None):
    """Checks shapes, sorts by score and pads to whole tiles.

    Returns a dict with `boxes` `[B, Np, 5]` (normalised corners, class id in column 4),
    `valid` `[B, Np]`, `scores` `[B, Np]` (sorted, `-inf` where invalid), `order` `[B, Np]`
    (sorted position -> input index), `n` (number of boxes), `tile`, `batched` and the input
    dtype.
    """
    boxes = tf.convert_to_tensor(boxes)
    scores = tf.convert_to_tensor(scores)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    if not scores.dtype.is_floating:
        scores = tf.cast(scores, tf.float32)
    rank = boxes.shape.rank
    allowed = (2, 3) if pad else (2,)
    if rank not in allowed or boxes.shape[-1] not in (4, None):
        expected = "[N, 4] (or [B, N, 4] with pad_to_max_output_size=True)" if pad else "[N, 4]"
        raise ValueError(f"`boxes` must have shape {expected}. Received: boxes.shape={boxes.shape}")
    if scores.shape.rank != rank - 1 or not scores.shape.is_compatible_with(boxes.shape[:-1]):
        raise ValueError(
            f"`scores` must have shape {boxes.shape[:-1]} (one score per box). "
            f"Received: scores.shape={scores.shape}"
        )
    if classes is not None:
        classes = tf.convert_to_tensor(classes)
        if classes.shape.rank != rank - 1 or not classes.shape.is_compatible_with(boxes.shape[:-1]):
            raise ValueError(
                f"`classes` must have shape {boxes.shape[:-1]} (one class id per box). "
                f"Received: classes.shape={classes.shape}"
            )
    batched = rank == 3
    if not batched:
        boxes, scores = boxes[None], scores[None]
        classes = None if classes is None else classes[None]
    dtype = boxes.dtype
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    static_n = boxes.shape[1]
    n = static_n if static_n is not None else tf.shape(boxes)[1]
    tile = _TILE if static_n is None else min(_TILE, max(8, 1 << max(static_n - 1, 0).bit_length()))
    neg_inf = tf.constant(float("-inf"))
    scores = tf.where(tf.math.is_nan(scores), neg_inf, scores)
    valid = scores > score_threshold
    scores = tf.where(valid, scores, neg_inf)
    sorted_scores, order = tf.math.top_k(scores, k=n)  # stable: ties keep the lower index first
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    cls = tf.zeros_like(y1) if classes is None else tf.cast(classes, tf.float32)
    boxes = tf.stack([tf.minimum(y1, y2), tf.minimum(x1, x2), tf.maximum(y1, y2),
                      tf.maximum(x1, x2), cls], axis=-1)
    boxes = tf.gather(boxes, order, batch_dims=1)
    valid = tf.gather(valid, order, batch_dims=1)
    npad = (n + tile - 1) // tile * tile
    extra = npad - n
    boxes = tf.pad(boxes, [[0, 0], [0, extra], [0, 0]])
    valid = tf.pad(valid, [[0, 0], [0, extra]])
    sorted_scores = tf.pad(sorted_scores, [[0, 0], [0, extra]], constant_values=float("-inf"))
    order = tf.pad(order, [[0, 0], [0, extra]])
    return {"boxes": boxes, "valid": valid, "scores": sorted_scores, "order": order, "n": n,
            "tile": tile, "batched": batched, "dtype": dtype}


# --------------------------------------------------------------------------------------------
# The blocked greedy core


def _coefficient(iou_threshold, mode):
    """The threshold as `_overlap` uses it: `t / (1 + t)` for "iou" (float64 for a Python t)."""
    if mode == "iou":
        iou_threshold = iou_threshold / (1.0 + iou_threshold)
    return tf.cast(iou_threshold, tf.float32)


def _overlap(p, q, p_valid, coef, mode, class_aware):
    """Whether each box of `p` [B, P, 5] suppresses each box of `q` [B, Q, 5]: [B, P, Q] bool.

    `mode="iou"`: IoU > t, tested as `inter > c * (area_p + area_q)` with `c = t / (1 + t)`
    (no division). `mode="diou"`: IoU - rho^2 / c^2 > t (Zheng et al.), `c = t`. `coef` is
    `_coefficient(t, mode)`. Rows where `p_valid` [B, P] is False suppress nothing.
    """
    py1, px1, py2, px2, pc = tf.unstack(p[:, :, None, :], 5, axis=-1)
    qy1, qx1, qy2, qx2, qc = tf.unstack(q[:, None, :, :], 5, axis=-1)
    # One relu is enough for the IoU test: with the y-overlap clamped at 0, a negative x-overlap
    # makes `inter` <= 0, which never exceeds the (non-negative) bound below.
    inter = (tf.nn.relu(tf.minimum(py2, qy2) - tf.maximum(py1, qy1))
             * (tf.minimum(px2, qx2) - tf.maximum(px1, qx1)))
    area_p = (py2 - py1) * (px2 - px1)
    area_q = (qy2 - qy1) * (qx2 - qx1)
    if mode == "iou":
        bound_p = tf.where(p_valid[:, :, None], coef * area_p, tf.constant(float("inf")))
        test = inter > bound_p + coef * area_q
    else:
        inter = tf.nn.relu(inter)
        iou = tf.math.divide_no_nan(inter, area_p + area_q - inter)
        diag = (tf.square(tf.maximum(py2, qy2) - tf.minimum(py1, qy1))
                + tf.square(tf.maximum(px2, qx2) - tf.minimum(px1, qx1)))
        dist = tf.square(py1 + py2 - qy1 - qy2) / 4 + tf.square(px1 + px2 - qx1 - qx2) / 4
        test = (iou - tf.math.divide_no_nan(dist, diag) > coef) & p_valid[:, :, None]
    if class_aware:
        test = test & tf.equal(pc, qc)
    return test


def _limit(prep, max_output_size):
    npad = tf.shape(prep["boxes"])[1]
    return npad if max_output_size is None else tf.minimum(npad, max_output_size)


def _greedy(prep, iou_threshold, max_output_size, mode, class_aware):
    """Greedy NMS over sorted, tile-padded boxes.

    Returns `(kept_pos, kept_boxes, count)`: sorted positions `[B, Np]` and boxes `[B, Np, 5]`
    of the kept boxes in order (the first `count[b]` entries of each row are meaningful).
    """
    return _run(_greedy_core, (mode, class_aware, prep["tile"]),
                (prep["boxes"], prep["valid"], _coefficient(iou_threshold, mode),
                 _limit(prep, max_output_size)), bucket_axis_1=(0, 1))


def _renewed(x, step):
    """`x` as a new tensor at each loop step (`x` where `step >= 0`, which always holds).

    TensorFlow Lite's int8 calibrator (TF 2.14 to at least 2.21) crashes the process on a WHILE
    whose body passes a float tensor through unchanged, as every float tensor a loop body reads
    from outside becomes (tensorflow/tensorflow#75140: the WHILE kernel frees that output, the
    calibrator then reads it). The cores below therefore read no outside float tensor: floats
    are carried as loop variables renewed by this select (one copy per step; XLA and LiteRT run
    it as a plain select). Integer and bool tensors are not calibrated and may be read freely.
    """
    return tf.where(step >= 0, x, tf.zeros([], x.dtype))


def _greedy_core(boxes, valid, coef, limit, mode, class_aware, tile):
    batch = tf.shape(boxes)[0]
    npad = tf.shape(boxes)[1]
    # Invalid boxes are sorted last: tiles past the last valid box need no work.
    num_tiles = (tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)) + tile - 1) // tile
    rows = tf.range(npad)
    lanes = tf.range(tile)
    upper = lanes[:, None] < lanes[None, :]  # i < j: earlier (higher score) suppresses later

    def tile_step(i, count, kept_pos_in, kept_boxes_in, boxes, coef):
        kept_pos, kept_boxes = kept_pos_in, kept_boxes_in
        start = i * tile
        cand = tf.slice(boxes, [0, start, 0], [batch, tile, 5])
        alive = tf.slice(valid, [0, start], [batch, tile])
        alive.set_shape([valid.shape[0], tile])
        cand.set_shape([boxes.shape[0], tile, 5])

        def against_kept(j, alive, kept_boxes, cand, coef):
            kept = tf.slice(kept_boxes, [0, j * tile, 0], [batch, tile, 5])
            kept_valid = (j * tile + lanes)[None, :] < count[:, None]
            hit = _overlap(kept, cand, kept_valid, coef, mode, class_aware)
            return (j + 1, _same_shapes([alive & ~tf.reduce_any(hit, axis=1)], [alive])[0],
                    *_same_shapes([_renewed(t, j) for t in (kept_boxes, cand, coef)],
                                  [kept_boxes, cand, coef]))

        kept_tiles = (tf.reduce_max(count) + tile - 1) // tile
        _, alive, *_ = tf.while_loop(lambda j, *_: j < kept_tiles, against_kept,
                                     [0, alive, kept_boxes, cand, coef])

        # bool, not float: the fixed-point loop reads it from outside (see `_renewed`)
        inside = _overlap(cand, cand, tf.ones_like(alive), coef, mode, class_aware) & upper[None]

        def fixed_point(keep, _):
            new = alive & ~tf.reduce_any(keep[:, :, None] & inside, axis=1)
            return _same_shapes([new], [keep])[0], tf.reduce_any(tf.not_equal(new, keep))

        alive, _ = tf.while_loop(lambda _, changed: changed, fixed_point, [alive, True])

        # Append the survivors, in order, to the compact buffers.
        num_new = tf.reduce_sum(tf.cast(alive, tf.int32), axis=1)
        _, first = tf.math.top_k(tf.where(alive, tile - lanes[None], 0), k=tile)
        at = tf.clip_by_value(rows[None] - count[:, None], 0, tile - 1)
        put = (rows[None] >= count[:, None]) & (rows[None] < (count + num_new)[:, None])
        new_pos = tf.gather(first + start, at, batch_dims=1)
        new_boxes = tf.gather(tf.gather(cand, first, batch_dims=1), at, batch_dims=1)
        kept_pos = tf.where(put, new_pos, kept_pos)
        kept_boxes = tf.where(put[:, :, None], new_boxes, kept_boxes)
        return (i + 1, *_same_shapes([count + num_new, kept_pos, kept_boxes],
                                     [count, kept_pos_in, kept_boxes_in]),
                *_same_shapes([_renewed(boxes, i), _renewed(coef, i)], [boxes, coef]))

    def more(i, count, *_):
        return (i < num_tiles) & tf.reduce_any(count < limit)

    count = tf.zeros(tf.shape(valid)[:1], tf.int32)
    count.set_shape(valid.shape[:1])
    _, count, kept_pos, kept_boxes, *_ = tf.while_loop(
        more, tile_step,
        [0, count, tf.zeros_like(valid, tf.int32), tf.zeros_like(boxes), boxes, coef])
    return kept_pos, kept_boxes, count


def _weighted_average(prep, kept_pos, kept_boxes, count, iou_threshold):
    """Each kept box replaced by the score-weighted mean of the boxes it suppressed (and itself).

    A suppressed box belongs to the first kept box, in score order, that suppressed it: the
    first kept box before it with IoU > threshold (Zhou et al.'s cluster, as greedy NMS forms it).
    """
    boxes, valid, scores, tile = prep["boxes"], prep["valid"], prep["scores"], prep["tile"]
    coef = _coefficient(iou_threshold, "iou")
    batch = tf.shape(boxes)[0]
    npad = tf.shape(boxes)[1]
    rows = tf.range(npad)
    lanes = tf.range(tile)

    def assign(j, owner):
        kept = tf.slice(kept_boxes, [0, j * tile, 0], [batch, tile, 5])
        pos = tf.slice(kept_pos, [0, j * tile], [batch, tile])
        kept_valid = (j * tile + lanes)[None, :] < count[:, None]
        hit = _overlap(kept, boxes, kept_valid, coef, "iou", True)
        hit = (hit & (pos[:, :, None] <= rows[None, None, :])) | (
            (pos[:, :, None] == rows[None, None, :]) & kept_valid[:, :, None])
        first = tf.reduce_min(tf.where(hit, (j * tile + lanes)[None, :, None], npad), axis=1)
        return j + 1, _same_shapes([tf.minimum(owner, first)], [owner])[0]

    kept_tiles = (tf.reduce_max(count) + tile - 1) // tile
    owner = tf.fill(tf.shape(valid), npad)
    owner.set_shape(valid.shape)
    _, owner = tf.while_loop(lambda j, _: j < kept_tiles, assign, [0, owner])
    owner = tf.where(valid, owner, npad)
    segments = owner + (npad + 1) * tf.range(batch)[:, None]
    weight = tf.where(valid, scores, 0.0)
    sums = tf.math.unsorted_segment_sum(
        tf.reshape(tf.concat([boxes[..., :4] * weight[..., None], weight[..., None]], -1),
                   [-1, 5]),
        tf.reshape(segments, [-1]), batch * (npad + 1))
    sums = tf.reshape(sums, [batch, npad + 1, 5])[:, :npad]
    total = sums[..., 4:]
    return tf.where(total > 0, sums[..., :4] / tf.where(total > 0, total, 1.0), kept_boxes[..., :4])


def _outputs(prep, kept_pos, count, max_output_size, pad, extras=()):
    """Maps kept sorted positions to input indices and pads/slices to the output size."""
    index = tf.gather(prep["order"], kept_pos, batch_dims=1)
    npad = tf.shape(index)[1]
    size = npad if max_output_size is None else max_output_size
    num_valid = tf.minimum(count, size)
    mask = tf.range(npad)[None] < num_valid[:, None]
    results = [tf.where(mask, index, 0)]
    for e in extras:
        results.append(tf.where(mask if e.shape.rank == 2 else mask[..., None], e, tf.zeros_like(e)))
    if pad:
        grow = tf.maximum(size - npad, 0)
        results = [tf.pad(r, [[0, 0], [0, grow]] + [[0, 0]] * (r.shape.rank - 2))[:, :size]
                   for r in results]
        if not prep["batched"]:
            results = [r[0] for r in results]
            num_valid = num_valid[0]
        return (*results, num_valid)
    results = [r[0, : num_valid[0]] for r in results]
    return results[0] if len(results) == 1 else tuple(results)


def _hard_family(name, boxes, scores, classes, iou_threshold, score_threshold, max_output_size,
                 pad, mode, weighted=False):
    with tf.name_scope(name):
        iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
        max_output_size = _check_max_output_size(max_output_size, pad)
        checks = _runtime_checks([("iou_threshold", iou_threshold, 0.0, 1.0),
                                  ("max_output_size", max_output_size, 0, None)])
        with tf.control_dependencies(checks):
            prep = _prepare(boxes, scores, score_threshold, pad, classes)
        kept_pos, kept_boxes, count = _greedy(prep, iou_threshold, max_output_size, mode,
                                              classes is not None)
        extras = ()
        if weighted:
            averaged = _weighted_average(prep, kept_pos, kept_boxes, count, iou_threshold)
            extras = (tf.cast(averaged, prep["dtype"]),)
        return _outputs(prep, kept_pos, count, max_output_size, pad, extras)


_SOFT_BLOCK = 8


def _soft_core(boxes, current, valid, limit, score_threshold, sigma, iou_threshold, method, tile):
    """Soft-NMS over sorted boxes: `(taken_pos, taken_scores, count)`.

    Several selections per step, exactly as one at a time: take the `k` highest current scores
    `c_1..c_k` (ties: lower position first, as `argmax`) and the decays of every box by each of
    them (`[k, N]`). `c_1` is the next selection. `c_b` is selected right after `c_1..c_(b-1)`
    when none of them changed its score (decay exactly 1.0, e.g. IoU 0) and its score is > 0:
    decays never raise a non-negative score, and a negative score only rises towards 0, so no
    other box can overtake `c_b`. The decays of the selected boxes are then applied one after
    the other (the same products, in the same order, as one selection per step), and the
    selected boxes are removed.
    """
    del tile  # only the length unit of `_run`'s padding
    # `_prepare` pads a non-empty input to >= 8 boxes (512 when the length is not static).
    k = _SOFT_BLOCK if boxes.shape[1] is None else min(_SOFT_BLOCK, boxes.shape[1])
    neg_inf = float("-inf")
    current = tf.where(valid, current, neg_inf)
    npad = tf.shape(boxes)[1]
    rows = tf.range(npad)
    lanes = tf.range(k)
    earlier = lanes[:, None] < lanes[None, :]  # [a, b]: a is before b
    y1, x1, y2, x2, _ = tf.unstack(boxes[:, None], 5, axis=-1)  # [B, 1, N]
    area = (y2 - y1) * (x2 - x1)

    def step(i, current, count, taken_pos, taken_scores):
        old = [current, count, taken_pos, taken_scores]
        top, cand = tf.math.top_k(current, k)  # [B, k]
        b = tf.gather(boxes, cand, batch_dims=1)[:, :, None]  # [B, k, 1, 5]
        by1, bx1, by2, bx2, _ = tf.unstack(b, 5, axis=-1)
        inter = (tf.nn.relu(tf.minimum(y2, by2) - tf.maximum(y1, by1))
                 * tf.nn.relu(tf.minimum(x2, bx2) - tf.maximum(x1, bx1)))
        iou = tf.math.divide_no_nan(inter, area + (by2 - by1) * (bx2 - bx1) - inter)  # [B, k, N]
        if method == "gaussian":
            decay = tf.exp(-tf.square(iou) / sigma)
        else:
            decay = tf.where(iou >= iou_threshold, 1.0 - iou, 1.0)
        among = tf.gather(decay, cand, batch_dims=1, axis=2)  # [B, k (a), k (b)]
        touched = tf.reduce_any(tf.not_equal(among, 1.0) & earlier[None], axis=1)
        ok = (~touched & (top > score_threshold) & ((lanes[None] == 0) | (top > 0.0))
              & (count[:, None] + lanes[None] < limit))
        num = tf.reduce_min(tf.where(ok, k, lanes[None]), axis=1)  # leading run of `ok`, [B]
        taken = (lanes[None] < num[:, None])[:, :, None] & tf.equal(cand[:, :, None], rows[None, None])
        current = tf.where(tf.reduce_any(taken, axis=1), neg_inf, current)

        def apply(a, current):
            decayed = current * tf.gather(decay, a, axis=1)
            decayed = tf.where(decayed > score_threshold, decayed, neg_inf)
            return a + 1, _same_shapes([tf.where((a < num)[:, None], decayed, current)],
                                       [current])[0]

        _, current = tf.while_loop(lambda a, _: a < tf.reduce_max(num), apply, [0, current])
        at = tf.clip_by_value(rows[None] - count[:, None], 0, k - 1)
        slot = (rows[None] >= count[:, None]) & (rows[None] < (count + num)[:, None])
        taken_pos = tf.where(slot, tf.gather(cand, at, batch_dims=1), taken_pos)
        taken_scores = tf.where(slot, tf.gather(top, at, batch_dims=1), taken_scores)
        new = [current, count + num, taken_pos, taken_scores]
        return (i + 1, *_same_shapes(new, old))

    def more(i, current, count, *_):
        return tf.reduce_any((count < limit)
                             & (tf.reduce_max(current, axis=1) > score_threshold))

    count = tf.zeros(tf.shape(current)[:1], tf.int32)
    count.set_shape(current.shape[:1])
    _, _, count, taken_pos, taken_scores = tf.while_loop(
        more, step, [0, current, count, tf.zeros_like(current, tf.int32),
                     tf.zeros_like(current)])
    return taken_pos, taken_scores, count


# --------------------------------------------------------------------------------------------
# Public API


def nms(boxes, scores, iou_threshold=0.5, score_threshold=float("-inf"), max_output_size=None,
        pad_to_max_output_size=False):
    """Greedy non-maximum suppression (same answer as torchvision's `nms` and `tf.image`'s).

    Args:
        boxes: float Tensor `[N, 4]`, `[y1, x1, y2, x2]` (`[B, N, 4]` allowed with
            `pad_to_max_output_size=True`).
        scores: float Tensor `[N]` (`[B, N]`).
        iou_threshold: suppress boxes whose IoU with a kept box is greater than this, in [0, 1].
        score_threshold: only boxes with `score > score_threshold` are considered.
        max_output_size: at most this many indices (None: no limit).
        pad_to_max_output_size: return a fixed-size result (for XLA and TFLite).

    Returns:
        int32 indices into `boxes` of the kept boxes, by descending score: `[K]`; or, with
        `pad_to_max_output_size=True`, `(indices, num_valid)` with `indices` `[max_output_size]`
        (`[B, max_output_size]`) padded with 0 after the first `num_valid` entries.

    Example:
        >>> boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]
        >>> nms(tf.constant(boxes, tf.float32), tf.constant([0.9, 0.8, 0.7])).numpy()
        array([0, 2], dtype=int32)

    Reference:
        Neubeck & Van Gool, "Efficient Non-Maximum Suppression", ICPR 2006.
    """
    return _hard_family("nms", boxes, scores, None, iou_threshold, score_threshold,
                        max_output_size, pad_to_max_output_size, "iou")


def batched_nms(boxes, scores, classes, iou_threshold=0.5, score_threshold=float("-inf"),
                max_output_size=None, pad_to_max_output_size=False):
    """Class-aware NMS: boxes only suppress boxes of the same class (torchvision's `batched_nms`).

    Boxes of different classes are compared with an exact class-equality mask (not by offsetting
    coordinates, which costs float32 precision for large offsets).

    Args:
        boxes: float Tensor `[N, 4]` (`[B, N, 4]` with `pad_to_max_output_size=True`).
        scores: float Tensor `[N]` (`[B, N]`).
        classes: int Tensor `[N]` (`[B, N]`), class id of each box (< 2**24).
        iou_threshold, score_threshold, max_output_size, pad_to_max_output_size: as `nms`.

    Returns:
        As `nms`: indices by descending score over all classes.

    Example:
        >>> boxes = tf.constant([[0, 0, 10, 10], [1, 1, 11, 11]], tf.float32)
        >>> batched_nms(boxes, tf.constant([0.9, 0.8]), tf.constant([0, 1])).numpy()
        array([0, 1], dtype=int32)

    Reference:
        torchvision.ops.batched_nms.
    """
    if classes is None:
        raise ValueError("`classes` must be an int Tensor [N]. Received: classes=None")
    return _hard_family("batched_nms", boxes, scores, classes, iou_threshold, score_threshold,
                        max_output_size, pad_to_max_output_size, "iou")


def diou_nms(boxes, scores, iou_threshold=0.5, score_threshold=float("-inf"),
             max_output_size=None, pad_to_max_output_size=False):
    """DIoU-NMS: suppress when `IoU - rho^2 / c^2 > iou_threshold`.

    `rho` is the distance between the box centres and `c` the diagonal of the smallest box
    enclosing both, so an overlapping box whose centre is far from the kept box survives more
    easily (it is more likely another object). Arguments and returns as `nms`.

    Example:
        >>> boxes = tf.constant([[0, 0, 10, 10], [0, 3, 10, 13]], tf.float32)
        >>> nms(boxes, tf.constant([0.9, 0.8]), iou_threshold=0.52).numpy()  # IoU 0.538
        array([0], dtype=int32)
        >>> diou_nms(boxes, tf.constant([0.9, 0.8]), iou_threshold=0.52).numpy()  # DIoU 0.505
        array([0, 1], dtype=int32)

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box
        Regression", AAAI 2020 (section "Non-Maximum Suppression using DIoU").
    """
    return _hard_family("diou_nms", boxes, scores, None, iou_threshold, score_threshold,
                        max_output_size, pad_to_max_output_size, "diou")


def weighted_nms(boxes, scores, iou_threshold=0.5, score_threshold=float("-inf"),
                 max_output_size=None, pad_to_max_output_size=False):
    """Weighted NMS: greedy NMS, then each kept box becomes the score-weighted average of its cluster.

    The cluster of a kept box is itself plus the boxes it suppressed (a box suppressed by
    several kept boxes belongs to the first of them, in score order, as greedy NMS removes it
    there). Weights are the scores, so they should be non-negative; a cluster whose weights sum
    to <= 0 keeps its box unchanged. The indices are those of `nms`.

    Args:
        As `nms`.

    Returns:
        `(indices, boxes)`: int32 `[K]` and the averaged boxes `[K, 4]` (corners sorted,
        yxyx); or, with `pad_to_max_output_size=True`, `(indices, boxes, num_valid)` padded
        with zeros to `max_output_size`.

    Example:
        >>> boxes = tf.constant([[0, 0, 10, 10], [2, 2, 12, 12]], tf.float32)
        >>> idx, avg = weighted_nms(boxes, tf.constant([0.75, 0.25]), iou_threshold=0.3)
        >>> avg.numpy()
        array([[ 0.5,  0.5, 10.5, 10.5]], dtype=float32)

    Reference:
        Zhou et al., "CAD: Scale Invariant Framework for Real-Time Object Detection",
        ICCV Workshops 2017.
    """
    return _hard_family("weighted_nms", boxes, scores, None, iou_threshold, score_threshold,
                        max_output_size, pad_to_max_output_size, "iou", weighted=True)


def soft_nms(boxes, scores, sigma=0.5, method="gaussian", iou_threshold=0.3,
             score_threshold=1e-3, max_output_size=None, pad_to_max_output_size=False):
    """Soft-NMS: instead of removing overlapping boxes, decay their scores.

    Repeatedly takes the box with the highest current score (ties: lower index) and multiplies
    the score of every remaining box `b` by `exp(-IoU^2 / sigma)` (method "gaussian"; the
    paper's form, `iou_threshold` unused) or by `1 - IoU` when `IoU >= iou_threshold` (method
    "linear"). Stops when no remaining score is above `score_threshold` or `max_output_size`
    boxes are taken. `tf.image.non_max_suppression_with_scores(..., iou_threshold=1.0,
    soft_nms_sigma=sigma / 2)` is the same Gaussian rule.

    Args:
        boxes: float Tensor `[N, 4]` (`[B, N, 4]` with `pad_to_max_output_size=True`), yxyx.
        scores: float Tensor `[N]` (`[B, N]`).
        sigma: Gaussian width (> 0).
        method: "gaussian" or "linear".
        iou_threshold: linear method's `N_t`, in [0, 1].
        score_threshold: boxes whose (decayed) score is `<= score_threshold` are dropped.
        max_output_size, pad_to_max_output_size: as `nms`.

    Returns:
        `(indices, scores)`: int32 `[K]` and their decayed scores `[K]`, by selection order
        (descending decayed score); with padding `(indices, scores, num_valid)`.

    Example:
        >>> boxes = tf.constant([[0, 0, 10, 10], [0, 5, 10, 15]], tf.float32)
        >>> idx, s = soft_nms(boxes, tf.constant([0.9, 0.8]), sigma=0.5)
        >>> s.numpy().round(4)
        array([0.9   , 0.6406], dtype=float32)

    Reference:
        Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", ICCV 2017.
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"`method` must be 'gaussian' or 'linear'. Received: method={method!r}")
    if isinstance(sigma, numbers.Real) and not sigma > 0:
        raise ValueError(f"`sigma` must be > 0. Received: sigma={sigma!r}")
    with tf.name_scope("soft_nms"):
        iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
        max_output_size = _check_max_output_size(max_output_size, pad_to_max_output_size)
        checks = _runtime_checks([("iou_threshold", iou_threshold, 0.0, 1.0),
                                  ("max_output_size", max_output_size, 0, None)])
        with tf.control_dependencies(checks):
            prep = _prepare(boxes, scores, score_threshold, pad_to_max_output_size)
        taken_pos, taken_scores, count = _run(
            _soft_core, (method, prep["tile"]),
            (prep["boxes"], prep["scores"], prep["valid"], _limit(prep, max_output_size),
             tf.cast(score_threshold, tf.float32), tf.cast(sigma, tf.float32),
             tf.cast(iou_threshold, tf.float32)), bucket_axis_1=(0, 1, 2))
        return _outputs(prep, taken_pos, count, max_output_size, pad_to_max_output_size,
                        (tf.cast(taken_scores, prep["dtype"]),))
