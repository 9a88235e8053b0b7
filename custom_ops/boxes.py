"""Box geometry: areas, the IoU family (IoU, GIoU, DIoU, CIoU), format conversion, the box coder.

Boxes are `[y1, x1, y2, x2]` (the order `tf.image` uses) in absolute coordinates unless a
function says otherwise; `convert_format` converts from and to xyxy, xywh and cxcywh. The IoU
family is written once with broadcasting: `box_iou(a, b)` is pairwise (`[N, 4]`, `[M, 4]` ->
`[N, M]`) and `box_iou(a, b, aligned=True)` element-wise (`[..., 4]`, `[..., 4]` -> `[...]`).
All functions are plain differentiable TensorFlow (the losses in `kcv.losses` train through
them); divisions use `divide_no_nan`, so zero-area boxes give IoU 0 instead of NaN.
"""

import math

import tensorflow as tf

_FORMATS = ("yxyx", "xyxy", "xywh", "cxcywh")
_DEFAULT_CLIP = math.log(1000.0 / 16.0)

__all__ = ["box_area", "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou",
           "convert_format", "clip_boxes", "encode_boxes", "decode_boxes"]


def _as_boxes(boxes, name):
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is not None and (boxes.shape.rank < 1 or boxes.shape[-1] not in (4, None)):
        raise ValueError(f"`{name}` must have shape [..., 4]. Received: {name}.shape={boxes.shape}")
    return boxes


def _check_format(fmt, name):
    if fmt not in _FORMATS:
        raise ValueError(f"`{name}` must be one of {_FORMATS}. Received: {name}={fmt!r}")


def box_area(boxes):
    """Area `(y2 - y1) * (x2 - x1)` of `[..., 4]` yxyx boxes, shape `[...]`.

    As torchvision's `box_area`, the sides are not clamped: a box with `y2 < y1` or `x2 < x1`
    has a negative (or zero) area.

    Args:
        boxes: float Tensor `[..., 4]`, `[y1, x1, y2, x2]`.

    Returns:
        float Tensor `[...]`, the dtype of `boxes`.

    Example:
        >>> box_area([[0.0, 0.0, 2.0, 3.0]]).numpy()
        array([6.], dtype=float32)
    """
    boxes = _as_boxes(boxes, "boxes")
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return (y2 - y1) * (x2 - x1)


def _pair(boxes1, boxes2, aligned):
    boxes1 = _as_boxes(boxes1, "boxes1")
    boxes2 = _as_boxes(boxes2, "boxes2")
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(
            "`boxes1` and `boxes2` must have the same dtype. "
            f"Received: boxes1.dtype={boxes1.dtype.name}, boxes2.dtype={boxes2.dtype.name}"
        )
    if not aligned:
        if boxes1.shape.rank != 2 or boxes2.shape.rank != 2:
            raise ValueError(
                "Pairwise IoU needs `boxes1` [N, 4] and `boxes2` [M, 4] (aligned=True compares "
                f"element-wise). Received: boxes1.shape={boxes1.shape}, boxes2.shape={boxes2.shape}"
            )
        boxes1, boxes2 = boxes1[:, None, :], boxes2[None, :, :]
    return boxes1, boxes2


def _iou_terms(boxes1, boxes2):
    """IoU, the enclosing box's sides, and both boxes' sides and centres (broadcast shapes)."""
    a_y1, a_x1, a_y2, a_x2 = tf.unstack(boxes1, 4, axis=-1)
    b_y1, b_x1, b_y2, b_x2 = tf.unstack(boxes2, 4, axis=-1)
    inter_h = tf.nn.relu(tf.minimum(a_y2, b_y2) - tf.maximum(a_y1, b_y1))
    inter_w = tf.nn.relu(tf.minimum(a_x2, b_x2) - tf.maximum(a_x1, b_x1))
    inter = inter_h * inter_w
    union = (a_y2 - a_y1) * (a_x2 - a_x1) + (b_y2 - b_y1) * (b_x2 - b_x1) - inter
    iou = tf.math.divide_no_nan(inter, union)
    enclose_h = tf.maximum(a_y2, b_y2) - tf.minimum(a_y1, b_y1)
    enclose_w = tf.maximum(a_x2, b_x2) - tf.minimum(a_x1, b_x1)
    return {
        "iou": iou, "union": union, "enclose_h": enclose_h, "enclose_w": enclose_w,
        "a_hw": (a_y2 - a_y1, a_x2 - a_x1), "b_hw": (b_y2 - b_y1, b_x2 - b_x1),
        "center_dy": (a_y1 + a_y2 - b_y1 - b_y2) / 2, "center_dx": (a_x1 + a_x2 - b_x1 - b_x2) / 2,
    }


def _distance_penalty(t):
    """rho^2 / c^2: squared centre distance over the squared diagonal of the enclosing box."""
    diag = tf.square(t["enclose_h"]) + tf.square(t["enclose_w"])
    return tf.math.divide_no_nan(tf.square(t["center_dy"]) + tf.square(t["center_dx"]), diag)


def box_iou(boxes1, boxes2, aligned=False):
    """Intersection over union of yxyx boxes.

    Args:
        boxes1: float Tensor `[N, 4]` (or `[..., 4]` with `aligned=True`), `[y1, x1, y2, x2]`.
        boxes2: float Tensor `[M, 4]` (or `[..., 4]` broadcastable with `boxes1`).
        aligned: `False` (default): every pair, `[N, M]`; `True`: element-wise, `[...]`.

    Returns:
        IoU, `|A & B| / |A | B|`, 0 where the union is empty.

    Example:
        >>> box_iou([[0.0, 0.0, 2.0, 2.0]], [[1.0, 0.0, 3.0, 2.0]]).numpy()
        array([[0.33333334]], dtype=float32)

    Reference:
        torchvision.ops.box_iou.
    """
    return _iou_terms(*_pair(boxes1, boxes2, aligned))["iou"]


def generalized_box_iou(boxes1, boxes2, aligned=False):
    """Generalized IoU: `IoU - (|C| - |A | B|) / |C|`, `C` the smallest enclosing box.

    In `[-1, 1]`; negative for disjoint boxes (so `1 - GIoU > 1`). Arguments as `box_iou`.

    Returns:
        `[N, M]` (pairwise) or `[...]` (`aligned=True`).

    Example:
        >>> generalized_box_iou([[0.0, 0.0, 1.0, 1.0]], [[0.0, 2.0, 1.0, 3.0]]).numpy()
        array([[-0.33333334]], dtype=float32)

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019.
    """
    t = _iou_terms(*_pair(boxes1, boxes2, aligned))
    enclose = t["enclose_h"] * t["enclose_w"]
    return t["iou"] - tf.math.divide_no_nan(enclose - t["union"], enclose)


def distance_box_iou(boxes1, boxes2, aligned=False):
    """Distance IoU: `IoU - rho^2 / c^2`.

    `rho` is the distance between the box centres, `c` the diagonal of the smallest enclosing
    box. Arguments as `box_iou`.

    Returns:
        `[N, M]` (pairwise) or `[...]` (`aligned=True`), in `[-1, 1]`.

    Example:
        >>> distance_box_iou([[0.0, 0.0, 1.0, 1.0]], [[0.0, 2.0, 1.0, 3.0]]).numpy()
        array([[-0.4]], dtype=float32)

    Reference:
        Zheng et al., "Distance-IoU Loss", AAAI 2020.
    """
    t = _iou_terms(*_pair(boxes1, boxes2, aligned))
    return t["iou"] - _distance_penalty(t)


def complete_box_iou(boxes1, boxes2, aligned=False):
    """Complete IoU: `IoU - rho^2 / c^2 - alpha * v`.

    `v = 4 / pi^2 * (atan(w1 / h1) - atan(w2 / h2))^2` measures the aspect-ratio mismatch and
    `alpha = v / (1 - IoU + v)`; as in the paper, `alpha` carries no gradient. Arguments as
    `box_iou`.

    Returns:
        `[N, M]` (pairwise) or `[...]` (`aligned=True`).

    Example:
        >>> complete_box_iou([[0.0, 0.0, 2.0, 2.0]], [[0.0, 0.0, 2.0, 2.0]]).numpy()
        array([[1.]], dtype=float32)

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box
        Regression", AAAI 2020 (section "Complete IoU Loss").
    """
    t = _iou_terms(*_pair(boxes1, boxes2, aligned))
    (a_h, a_w), (b_h, b_w) = t["a_hw"], t["b_hw"]
    v = (4.0 / math.pi**2) * tf.square(
        tf.atan(tf.math.divide_no_nan(b_w, b_h)) - tf.atan(tf.math.divide_no_nan(a_w, a_h))
    )
    alpha = tf.stop_gradient(tf.math.divide_no_nan(v, 1.0 - t["iou"] + v))
    return t["iou"] - _distance_penalty(t) - alpha * v


def convert_format(boxes, source, target):
    """Converts `[..., 4]` boxes between "yxyx", "xyxy", "xywh" (corner + size) and "cxcywh".

    Args:
        boxes: float Tensor `[..., 4]` in `source` format.
        source, target: one of "yxyx" (`[y1, x1, y2, x2]`, kcv's default), "xyxy"
            (`[x1, y1, x2, y2]`), "xywh" (`[x1, y1, width, height]`, COCO), "cxcywh"
            (`[center_x, center_y, width, height]`).

    Returns:
        `[..., 4]` in `target` format, the dtype of `boxes`.

    Example:
        >>> convert_format([[10.0, 20.0, 30.0, 60.0]], "yxyx", "cxcywh").numpy()
        array([[40., 20., 40., 20.]], dtype=float32)
    """
    _check_format(source, "source")
    _check_format(target, "target")
    boxes = _as_boxes(boxes, "boxes")
    if source == target:
        return boxes
    a, b, c, d = tf.unstack(boxes, 4, axis=-1)
    if source == "yxyx":
        x1, y1, x2, y2 = b, a, d, c
    elif source == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif source == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:  # cxcywh
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if target == "yxyx":
        out = (y1, x1, y2, x2)
    elif target == "xyxy":
        out = (x1, y1, x2, y2)
    elif target == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return tf.stack(out, axis=-1)


def clip_boxes(boxes, image_shape):
    """Clips yxyx boxes to the image: `y` to `[0, height]`, `x` to `[0, width]`.

    Args:
        boxes: float Tensor `[..., 4]`, `[y1, x1, y2, x2]`.
        image_shape: `(height, width)`: Python numbers or a Tensor `[2]` (or `[..., 2]`
            broadcastable with the boxes' leading dimensions).

    Returns:
        `[..., 4]` clipped boxes.

    Example:
        >>> clip_boxes([[-5.0, 2.0, 40.0, 70.0]], (32, 64)).numpy()
        array([[ 0.,  2., 32., 64.]], dtype=float32)
    """
    boxes = _as_boxes(boxes, "boxes")
    shape = tf.cast(tf.convert_to_tensor(image_shape), boxes.dtype)
    if shape.shape.rank is not None and (shape.shape.rank < 1 or shape.shape[-1] not in (2, None)):
        raise ValueError(
            f"`image_shape` must be (height, width). Received: image_shape={image_shape!r}"
        )
    hw = tf.concat([shape, shape], axis=-1)
    return tf.clip_by_value(boxes, tf.zeros_like(boxes), tf.broadcast_to(hw, tf.shape(boxes)))


def _check_weights(weights):
    """The coder weights as 4 floats; `None` means no scaling, `(1, 1, 1, 1)`."""
    if weights is None:
        return (1.0, 1.0, 1.0, 1.0)
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4 or any(w <= 0 for w in weights):
        raise ValueError(
            f"`weights` must be 4 positive numbers (wy, wx, wh, ww). Received: weights={weights!r}"
        )
    return weights


def _center_size(boxes):
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return (y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Faster R-CNN regression targets of yxyx `boxes` relative to yxyx `anchors`.

    `dy = wy * (cy - cy_a) / h_a`, `dx = wx * (cx - cx_a) / w_a`, `dh = wh * log(h / h_a)`,
    `dw = ww * log(w / w_a)` (sizes without the old "+1", as torchvision and Detectron2).

    Args:
        boxes: float Tensor `[..., 4]`, the ground-truth boxes.
        anchors: float Tensor `[..., 4]` broadcastable with `boxes`, positive sizes.
        weights: `(wy, wx, wh, ww)`, e.g. `(10, 10, 5, 5)` for the Fast R-CNN box head;
            `None` is `(1, 1, 1, 1)`.

    Returns:
        deltas `[..., 4]`, `[dy, dx, dh, dw]`.

    Example:
        >>> encode_boxes([[0.0, 0.0, 20.0, 10.0]], [[0.0, 0.0, 10.0, 10.0]]).numpy()
        array([[0.5      , 0.       , 0.6931472, 0.       ]], dtype=float32)

    Reference:
        Girshick et al., "Rich feature hierarchies...", CVPR 2014 (appendix C); Ren et al.,
        "Faster R-CNN", NeurIPS 2015.
    """
    weights = _check_weights(weights)
    boxes = _as_boxes(boxes, "boxes")
    anchors = tf.cast(_as_boxes(anchors, "anchors"), boxes.dtype)
    cy, cx, h, w = _center_size(boxes)
    acy, acx, ah, aw = _center_size(anchors)
    wy, wx, wh, ww = weights
    return tf.stack(
        [wy * (cy - acy) / ah, wx * (cx - acx) / aw, wh * tf.math.log(h / ah),
         ww * tf.math.log(w / aw)], axis=-1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=_DEFAULT_CLIP):
    """Inverse of `encode_boxes`: yxyx boxes from `[dy, dx, dh, dw]` deltas and yxyx anchors.

    The size deltas `dh / wh` and `dw / ww` are clipped at `clip` (default `log(1000 / 16)`,
    as torchvision and Detectron2) before `exp`, so a wild prediction cannot overflow.

    Args:
        deltas: float Tensor `[..., 4]`.
        anchors: float Tensor `[..., 4]` broadcastable with `deltas`.
        weights: `(wy, wx, wh, ww)` used when encoding; `None` is `(1, 1, 1, 1)`.
        clip: upper bound of the log-size deltas, or `None` for no clipping.

    Returns:
        boxes `[..., 4]`, `[y1, x1, y2, x2]`, the dtype of `deltas`.

    Example:
        >>> decode_boxes([[0.5, 0.0, 0.6931472, 0.0]], [[0.0, 0.0, 10.0, 10.0]]).numpy()
        array([[ 0.,  0., 20., 10.]], dtype=float32)

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015.
    """
    weights = _check_weights(weights)
    deltas = _as_boxes(deltas, "deltas")
    anchors = tf.cast(_as_boxes(anchors, "anchors"), deltas.dtype)
    acy, acx, ah, aw = _center_size(anchors)
    dy, dx, dh, dw = tf.unstack(deltas, 4, axis=-1)
    wy, wx, wh, ww = weights
    dh, dw = dh / wh, dw / ww
    if clip is not None:
        dh, dw = tf.minimum(dh, clip), tf.minimum(dw, clip)
    cy = dy / wy * ah + acy
    cx = dx / wx * aw + acx
    h = tf.exp(dh) * ah
    w = tf.exp(dw) * aw
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
