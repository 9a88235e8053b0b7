"""Training targets of bottom-up pose estimation: confidence maps, part affinity fields, weights.

Keypoints are `[P, K, 2]` (x, y) pixel coordinates of the input image with visibility `[P, K]`
(0 = not labelled, counted as absent; COCO's 1 and 2 count as present). An output map of
stride `s` has its pixel (i, j) at the input point (x, y) = (j * s, i * s). Everything here is
vectorised TensorFlow (no loop over people, keypoints or pixels), so it runs inside `tf.data`.

Reference:
    Cao, Simon, Wei & Sheikh, "Realtime Multi-Person 2D Pose Estimation using Part Affinity
    Fields", CVPR 2017, sections 2.2 (confidence maps) and 2.3 (part affinity fields).
"""

import numpy as np
import tensorflow as tf

__all__ = ["COCO_KEYPOINT_NAMES", "COCO_PERSON_LIMBS", "check_limbs", "confidence_maps",
           "keypoint_weights", "part_affinity_fields"]

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# A tree over COCO's 17 keypoints rooted at the nose, parents before children, so that the
# greedy assembly (kcv.models.pose.assembly) can grow each person limb by limb.
COCO_PERSON_LIMBS = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (0, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)


def _check_output_shape(output_shape):
    shape = tuple(output_shape) if isinstance(output_shape, (list, tuple)) else ()
    if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                              or s < 1 for s in shape):
        raise ValueError("`output_shape` must be (height, width), positive ints. Received: "
                         f"output_shape={output_shape!r}")
    return int(shape[0]), int(shape[1])


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    return float(value)


def _check_map_arguments(output_shape, stride, **scale):
    """`(height, width)`, `stride` and the one spread argument in `scale`, checked."""
    ((name, value),) = scale.items()
    return (_check_output_shape(output_shape), _check_positive(stride, "stride"),
            _check_positive(value, name))


def check_limbs(limbs, num_keypoints=None):
    """`limbs` as a tuple of `(j1, j2)` int pairs, distinct joints, within `[0, num_keypoints)`.

    Raises:
        ValueError: naming `limbs` and echoing it.
    """
    def is_index(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0

    try:
        pairs = tuple(tuple(pair) for pair in limbs)
        ok = bool(pairs) and all(len(p) == 2 and is_index(p[0]) and is_index(p[1])
                                 and p[0] != p[1] for p in pairs)
    except TypeError:
        ok, pairs = False, ()
    pairs = tuple((int(a), int(b)) for a, b in pairs) if ok else ()
    if ok and num_keypoints is not None:
        ok = all(a < num_keypoints and b < num_keypoints for a, b in pairs)
    if not ok:
        bound = f" in [0, {num_keypoints})" if num_keypoints is not None else ""
        raise ValueError(f"`limbs` must be a non-empty list of (j1, j2) pairs of distinct "
                         f"keypoint indices{bound}. Received: limbs={limbs!r}")
    return pairs


def _check_keypoints(keypoints, visibility):
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    visibility = tf.convert_to_tensor(visibility)
    if keypoints.shape.rank != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"`keypoints` must be [P, K, 2] (x, y) pixels. Received: "
                         f"keypoints.shape={keypoints.shape}")
    if visibility.shape.rank != 2 or not visibility.shape.is_compatible_with(
            keypoints.shape[:2]):
        raise ValueError(f"`visibility` must be [P, K], as `keypoints` [P, K, 2]. Received: "
                         f"visibility.shape={visibility.shape}, keypoints.shape={keypoints.shape}")
    return keypoints, tf.cast(visibility > 0, tf.float32)


def _grid(output_shape, stride):
    """Input-pixel coordinates `(x [1, W], y [H, 1])` of the output pixels."""
    height, width = output_shape
    xs = tf.range(width, dtype=tf.float32)[None, :] * stride
    ys = tf.range(height, dtype=tf.float32)[:, None] * stride
    return xs, ys


def confidence_maps(keypoints, visibility, output_shape, sigma, stride=1):
    """The paper's confidence maps: a Gaussian peak per visible keypoint, max over people.

    Formula:
        For keypoint k of person p at x_{p,k} and the input point q of an output pixel:

            S_k(q) = max_p  v_{p,k} * exp(-||q - x_{p,k}||^2 / sigma^2)

        with v_{p,k} = 1 if the keypoint is visible (labelled) and 0 otherwise. The maximum
        (not the sum) keeps two nearby peaks distinct (Cao et al., eq. 7).

    Args:
        keypoints: float `[P, K, 2]` (x, y) in input pixels (P may be 0).
        visibility: `[P, K]`, 0 = not labelled.
        output_shape: `(H, W)` of the map.
        sigma: spread of the peaks, in input pixels.
        stride: input pixels per output pixel: output pixel (i, j) is input point
            (x, y) = (j * stride, i * stride).

    Returns:
        float32 `[H, W, K]` in [0, 1].

    Example:
        >>> maps = confidence_maps([[[2.0, 1.0]]], [[2]], (3, 4), sigma=1.0)
        >>> float(maps[1, 2, 0]), round(float(maps[1, 3, 0]), 4)  # 1 and exp(-1)
        (1.0, 0.3679)

    Reference:
        Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields",
        CVPR 2017, section 2.2.
    """
    output_shape, stride, sigma = _check_map_arguments(output_shape, stride, sigma=sigma)
    with tf.name_scope("confidence_maps"):
        keypoints, visible = _check_keypoints(keypoints, visibility)
        xs, ys = _grid(output_shape, stride)
        dx = xs[None, None] - keypoints[..., 0, None, None]  # [P, K, 1, W]
        dy = ys[None, None] - keypoints[..., 1, None, None]  # [P, K, H, 1]
        peaks = tf.exp(-(dx**2 + dy**2) / sigma**2) * visible[..., None, None]  # [P, K, H, W]
        num_keypoints = tf.shape(keypoints)[1]
        zeros = tf.zeros(tf.stack([1, num_keypoints, *output_shape]), tf.float32)
        maps = tf.reduce_max(tf.concat([zeros, peaks], axis=0), axis=0)  # P may be 0
        return tf.transpose(maps, [1, 2, 0])


def _limb_geometry(keypoints, visible, limbs):
    """Start points `[P, L, 2]`, unit vectors `[P, L, 2]`, lengths `[P, L]` and whether the
    limb is labelled (both ends visible, non-zero length) `[P, L]`."""
    start = tf.gather(keypoints, [a for a, _ in limbs], axis=1)
    end = tf.gather(keypoints, [b for _, b in limbs], axis=1)
    labelled = (tf.gather(visible, [a for a, _ in limbs], axis=1)
                * tf.gather(visible, [b for _, b in limbs], axis=1))
    vector = end - start
    length = tf.norm(vector, axis=-1)
    unit = tf.math.divide_no_nan(vector, length[..., None])
    labelled *= tf.cast(length > 0, tf.float32)
    return start, unit, length, labelled


def part_affinity_fields(keypoints, visibility, limbs, output_shape, limb_width, stride=1):
    """The paper's part affinity fields: the limb's unit vector on the pixels the limb covers.

    Formula:
        For limb c = (j1, j2) of person p, with v = (x_{p,j2} - x_{p,j1}) / l the unit vector
        and l = ||x_{p,j2} - x_{p,j1}|| the length, the input point q of an output pixel is on
        the limb when

            0 <= v . (q - x_{p,j1}) <= l   and   |v_perp . (q - x_{p,j1})| <= limb_width,

        and the field averages over the n_c(q) people whose limb c covers q:

            L_c(q) = (1 / n_c(q)) * sum_p [q on limb c of p] * v_{p,c},   0 where n_c(q) = 0.

        A limb with an end not visible, or of length 0, covers nothing (Cao et al., eqs. 8-9).

    Args:
        keypoints: float `[P, K, 2]` (x, y) in input pixels (P may be 0).
        visibility: `[P, K]`, 0 = not labelled.
        limbs: `L` pairs `(j1, j2)` of keypoint indices; the vector points from j1 to j2.
        output_shape: `(H, W)` of the field.
        limb_width: half-width sigma_l of a limb across it, in input pixels.
        stride: input pixels per output pixel, as `confidence_maps`.

    Returns:
        float32 `[H, W, L, 2]`: the (x, y) components per limb.

    Example:
        >>> fields = part_affinity_fields([[[0.0, 1.0], [3.0, 1.0]]], [[1, 1]], [(0, 1)],
        ...                               (3, 5), limb_width=0.5)
        >>> fields[1, :, 0, 0].numpy()  # along the limb's row: (1, 0) for x in [0, 3]
        array([1., 1., 1., 1., 0.], dtype=float32)

    Reference:
        Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields",
        CVPR 2017, section 2.3.
    """
    output_shape, stride, limb_width = _check_map_arguments(output_shape, stride,
                                                            limb_width=limb_width)
    with tf.name_scope("part_affinity_fields"):
        keypoints, visible = _check_keypoints(keypoints, visibility)
        limbs = check_limbs(limbs, keypoints.shape[1])
        start, unit, length, labelled = _limb_geometry(keypoints, visible, limbs)
        covered = _limb_cover(start, unit, length, labelled, output_shape, stride, limb_width)
        count = tf.reduce_sum(covered, axis=0)  # [L, H, W]
        total = tf.einsum("plhw,plc->lhwc", covered, unit)  # [L, H, W, 2]
        fields = tf.math.divide_no_nan(total, count[..., None])
        return tf.transpose(fields, [1, 2, 0, 3])


def _limb_cover(start, unit, length, labelled, output_shape, stride, limb_width):
    """1.0 where the input point of an output pixel lies on the limb, `[P, L, H, W]`."""
    xs, ys = _grid(output_shape, stride)
    dx = xs[None, None] - start[..., 0, None, None]  # [P, L, 1, W]
    dy = ys[None, None] - start[..., 1, None, None]  # [P, L, H, 1]
    ux, uy = unit[..., 0, None, None], unit[..., 1, None, None]
    along = ux * dx + uy * dy
    across = tf.abs(ux * dy - uy * dx)
    inside = (along >= 0) & (along <= length[..., None, None]) & (across <= limb_width)
    return tf.cast(inside, tf.float32) * labelled[..., None, None]


def keypoint_weights(boxes, visibility, limbs, output_shape, stride=1):
    """Per-pixel loss weights W(q): 0 inside a person's box for the keypoints it lacks.

    A person whose keypoint k is not labelled (visibility 0) may still show it, so the heatmap
    of k gets weight 0 inside that person's box; a limb gets weight 0 there when either end is
    missing. A person with no labelled keypoint at all (an unlabelled person, COCO's
    `num_keypoints = 0`) thus masks every channel inside its box (Cao et al., section 2.1:
    "W is a binary mask with W(p) = 0 when the annotation is missing at an image location p").

    Args:
        boxes: float `[P, 4]` `[y1, x1, y2, x2]` input pixels of the people.
        visibility: `[P, K]`, 0 = not labelled.
        limbs: `L` pairs `(j1, j2)`.
        output_shape: `(H, W)`.
        stride: input pixels per output pixel.

    Returns:
        `(heatmap_weights float32 [H, W, K], field_weights float32 [H, W, L, 2])` of 0s and 1s.

    Example:
        >>> w, f = keypoint_weights([[0.0, 0.0, 1.0, 1.0]], [[1, 0]], [(0, 1)], (3, 3))
        >>> w[..., 1].numpy()  # keypoint 1 is missing: masked on the box's pixels
        array([[0., 0., 1.],
               [0., 0., 1.],
               [1., 1., 1.]], dtype=float32)
    """
    output_shape = _check_output_shape(output_shape)
    stride = _check_positive(stride, "stride")
    with tf.name_scope("keypoint_weights"):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        if boxes.shape.rank != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must be [P, 4] [y1, x1, y2, x2]. Received: "
                             f"boxes.shape={boxes.shape}")
        missing = 1.0 - tf.cast(tf.convert_to_tensor(visibility) > 0, tf.float32)  # [P, K]
        limbs = check_limbs(limbs, missing.shape[1])
        missing_limb = tf.maximum(tf.gather(missing, [a for a, _ in limbs], axis=1),
                                  tf.gather(missing, [b for _, b in limbs], axis=1))
        xs, ys = _grid(output_shape, stride)
        inside = tf.cast(
            (ys[None] >= boxes[:, 0, None, None]) & (ys[None] <= boxes[:, 2, None, None])
            & (xs[None] >= boxes[:, 1, None, None]) & (xs[None] <= boxes[:, 3, None, None]),
            tf.float32)  # [P, H, W]
        masked = tf.einsum("phw,pk->hwk", inside, missing)
        masked_limb = tf.einsum("phw,pl->hwl", inside, missing_limb)
        heatmap_weights = tf.cast(masked == 0, tf.float32)
        field_weights = tf.tile(tf.cast(masked_limb == 0, tf.float32)[..., None], [1, 1, 1, 2])
        return heatmap_weights, field_weights
