"""Box-aware augmentation in tf.data: flips, resizing, scale jitter, crops and colour jitter.

Every function takes and returns one example `(image, targets)`: `image` float32 `[H, W, 3]`
and `targets = {"boxes": float32 [M, 4], "classes": int32 [M]}` with `[y1, x1, y2, x2]` boxes in
absolute pixels, padded at the end with class -1 and zero boxes (the element of
`kcv.data.shapes_detection_dataset` / `coco_detection` before batching). Geometric functions
move the boxes with the image; boxes that leave the image are dropped (class -1, zero box) and
the remaining ones moved to the front, so the padding convention holds after every step. The
random ones are stateless (`seed` is an int32/int64 `[2]` Tensor), so a seed gives the same
result in every run.
"""

import tensorflow as tf

from custom_ops.boxes import box_area, clip_boxes


def _image_size(image):
    shape = tf.shape(image)
    return shape[0], shape[1]


def _compact(boxes, classes, keep):
    """Zeroes the boxes not in `keep` (class -1) and moves the kept ones to the front, in order."""
    keep = keep & (classes >= 0)
    order = tf.argsort(tf.cast(~keep, tf.int32), stable=True)
    keep = tf.gather(keep, order)
    boxes = tf.where(keep[:, None], tf.gather(boxes, order), tf.zeros_like(boxes))
    classes = tf.where(keep, tf.gather(classes, order), -tf.ones_like(classes))
    return boxes, classes


def _with(targets, boxes, classes=None):
    out = dict(targets)
    out["boxes"] = boxes
    if classes is not None:
        out["classes"] = classes
    return out


def pad_targets(boxes, classes, max_boxes):
    """Pads `[N, 4]` boxes and `[N]` classes (`N <= max_boxes`) to `max_boxes` with zero boxes
    and class -1.

    Args:
        boxes: float Tensor `[N, 4]`.
        classes: int Tensor `[N]`.
        max_boxes: Python int `M`.

    Returns:
        `{"boxes": float32 [M, 4], "classes": int32 [M]}`.

    Example:
        >>> t = pad_targets([[1.0, 2.0, 3.0, 4.0]], [0], 3)
        >>> t["classes"].numpy()
        array([ 0, -1, -1], dtype=int32)
    """
    boxes = tf.cast(tf.reshape(boxes, [-1, 4]), tf.float32)
    classes = tf.cast(tf.reshape(classes, [-1]), tf.int32)
    extra = max_boxes - tf.shape(classes)[0]
    with tf.control_dependencies([tf.debugging.assert_non_negative(
            extra, message=f"more boxes than max_boxes={max_boxes}")]):
        boxes = tf.pad(boxes, [[0, extra], [0, 0]])
        classes = tf.pad(classes, [[0, extra]], constant_values=-1)
    return {"boxes": tf.ensure_shape(boxes, (max_boxes, 4)),
            "classes": tf.ensure_shape(classes, (max_boxes,))}


def flip_horizontal(image, targets):
    """Mirrors the image left-right; a box `[y1, x1, y2, x2]` becomes `[y1, W - x2, y2, W - x1]`.

    Example:
        >>> image = tf.zeros((10, 100, 3))
        >>> t = {"boxes": tf.constant([[1.0, 20.0, 5.0, 50.0]]), "classes": tf.constant([0])}
        >>> flip_horizontal(image, t)[1]["boxes"].numpy()
        array([[ 1., 50.,  5., 80.]], dtype=float32)
    """
    _, width = _image_size(image)
    width = tf.cast(width, tf.float32)
    y1, x1, y2, x2 = tf.unstack(targets["boxes"], 4, axis=-1)
    boxes = tf.stack([y1, width - x2, y2, width - x1], axis=-1)
    boxes = tf.where((targets["classes"] >= 0)[:, None], boxes, tf.zeros_like(boxes))
    return tf.reverse(image, axis=[1]), _with(targets, boxes)


def resize_detection(image, targets, size, antialias=False):
    """Resizes the image to `size` (bilinear) and scales the boxes with it.

    Box coordinates are multiplied by `new_h / H` (rows) and `new_w / W` (columns), as
    torchvision's `resize_boxes`.

    Args:
        image: float32 `[H, W, 3]`.
        targets: the targets dict.
        size: `(new_h, new_w)`, Python ints or int Tensors.
        antialias: as `tf.image.resize` (torchvision's detection transform uses none).

    Returns:
        `(image [new_h, new_w, 3], targets)`.
    """
    height, width = _image_size(image)
    size = tf.cast(tf.convert_to_tensor(size), tf.int32)
    resized = tf.image.resize(image, size, method="bilinear", antialias=antialias)
    ratio = tf.cast(size, tf.float32) / tf.cast(tf.stack([height, width]), tf.float32)
    boxes = targets["boxes"] * tf.tile(ratio, [2])
    return resized, _with(targets, boxes)


def crop_detection(image, targets, offset, size, min_visibility=0.3):
    """Crops the window `[oy, ox, oy + h, ox + w]`, zero-padding where it leaves the image.

    Boxes are shifted by `-(oy, ox)` and clipped to the window; a box whose clipped area is
    less than `min_visibility` times its area (or zero) is dropped.

    Args:
        image: float32 `[H, W, 3]`.
        targets: the targets dict.
        offset: `(oy, ox)`, non-negative ints (Python or Tensor): the window's top-left pixel.
        size: `(h, w)`, the window's size.
        min_visibility: the fraction of a box's area that must lie in the window for it to stay.

    Returns:
        `(image [h, w, 3], targets)`.

    Example:
        >>> t = {"boxes": tf.constant([[10.0, 10.0, 50.0, 50.0]]), "classes": tf.constant([1])}
        >>> _, out = crop_detection(tf.zeros((100, 100, 3)), t, (20, 30), (40, 40))
        >>> out["boxes"].numpy()  # 600 of 1600 pixels visible: 0.375 >= 0.3
        array([[ 0.,  0., 30., 20.]], dtype=float32)
    """
    if not 0.0 <= min_visibility <= 1.0:
        raise ValueError(f"`min_visibility` must be in [0, 1]. Received: "
                         f"min_visibility={min_visibility!r}")
    height, width = _image_size(image)
    oy, ox = (tf.cast(v, tf.int32) for v in tf.unstack(tf.convert_to_tensor(offset)))
    h, w = (tf.cast(v, tf.int32) for v in tf.unstack(tf.convert_to_tensor(size)))
    padded = tf.image.pad_to_bounding_box(image, 0, 0, tf.maximum(height, oy + h),
                                          tf.maximum(width, ox + w))
    cropped = padded[oy:oy + h, ox:ox + w]
    shift = tf.cast(tf.stack([oy, ox, oy, ox]), tf.float32)
    boxes = targets["boxes"] - shift
    clipped = clip_boxes(boxes, tf.stack([h, w]))
    area = box_area(targets["boxes"])
    visible = box_area(clipped)
    keep = (visible > 0) & (visible >= min_visibility * area)
    boxes, classes = _compact(clipped, targets["classes"], keep)
    return cropped, _with(targets, boxes, classes)


def color_jitter(image, seed, brightness=0.2, contrast=0.3, saturation=0.3, hue=0.05):
    """Random brightness, contrast, saturation and hue (image only), clipped to [0, 1].

    Args:
        image: float32 `[H, W, 3]` in [0, 1].
        seed: int Tensor `[2]`.
        brightness: maximal added brightness delta.
        contrast, saturation: factors drawn from `[1 - x, 1 + x]`.
        hue: maximal hue shift (fraction of the colour circle).

    Returns:
        The jittered image.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    if brightness:
        image = tf.image.stateless_random_brightness(image, brightness, seeds[0])
    if contrast:
        image = tf.image.stateless_random_contrast(image, 1 - contrast, 1 + contrast, seeds[1])
    if saturation:
        image = tf.image.stateless_random_saturation(image, 1 - saturation, 1 + saturation,
                                                     seeds[2])
    if hue:
        image = tf.image.stateless_random_hue(image, hue, seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0)


def random_scale_crop(image, targets, seed, output_size, scale_range=(0.75, 1.33),
                      min_visibility=0.3):
    """Scale jitter: resize by a random factor, then random-crop or pad to `output_size`.

    The image is resized (aspect kept) by `s * min(out_h / H, out_w / W)`, `s` uniform in
    `scale_range`, to `round(H * scale), round(W * scale)`; a side larger than the output is
    cropped at a random offset (boxes clipped, dropped below `min_visibility`), a smaller one
    is zero-padded at the bottom/right.

    Args:
        image, targets: one example.
        seed: int Tensor `[2]`.
        output_size: `(out_h, out_w)` Python ints.
        scale_range: `(low, high)`, `0 < low <= high`.
        min_visibility: as `crop_detection`.

    Returns:
        `(image [out_h, out_w, 3], targets)`.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"`scale_range` must be (low, high) with 0 < low <= high. "
                         f"Received: scale_range={scale_range!r}")
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    height, width = _image_size(image)
    hw = tf.cast(tf.stack([height, width]), tf.float32)
    out = tf.constant(output_size, tf.float32)
    s = tf.random.stateless_uniform([], seeds[0], low, high)
    scale = s * tf.reduce_min(out / hw)
    new_size = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    image, targets = resize_detection(image, targets, new_size)
    room = tf.maximum(new_size - tf.constant(output_size, tf.int32), 0)
    oy = tf.random.stateless_uniform([], seeds[1], 0, room[0] + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[2], 0, room[1] + 1, dtype=tf.int32)
    image, targets = crop_detection(image, targets, tf.stack([oy, ox]), output_size,
                                    min_visibility)
    return tf.ensure_shape(image, (*output_size, 3)), targets


def augment_detection(image, targets, seed, output_size, flip_probability=0.5,
                      scale_range=(0.75, 1.33), min_visibility=0.3, color_jitter_strength=1.0):
    """The standard detection augmentation of one example: flip, scale jitter, colour jitter.

    Args:
        image, targets: one example (`[H, W, 3]` float32 in [0, 1], padded targets).
        seed: int Tensor `[2]`.
        output_size: `(out_h, out_w)` of the result (see `random_scale_crop`), or None to
            keep the image's size (no scale jitter: flip and colour jitter only).
        flip_probability: probability of the horizontal flip.
        scale_range: scale jitter range (`(1, 1)` keeps the scale: only fits to `output_size`).
        min_visibility: boxes keeping less of their area in the crop are dropped.
        color_jitter_strength: 0 switches colour jitter off; 1 gives brightness 0.2,
            contrast/saturation 0.7..1.3, hue 0.05.

    Returns:
        `(image [out_h, out_w, 3], targets)`.

    Example:
        >>> t = {"boxes": tf.constant([[1.0, 2.0, 5.0, 9.0]]), "classes": tf.constant([0])}
        >>> image, t = augment_detection(tf.zeros((16, 16, 3)), t, tf.constant([1, 2]), (16, 16))
    """
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"`flip_probability` must be in [0, 1]. Received: "
                         f"flip_probability={flip_probability!r}")
    if color_jitter_strength < 0:
        raise ValueError(f"`color_jitter_strength` must be >= 0. Received: "
                         f"color_jitter_strength={color_jitter_strength!r}")
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    flip = tf.random.stateless_uniform([], seeds[0]) < flip_probability
    image, targets = tf.cond(flip, lambda: flip_horizontal(image, targets),
                             lambda: (image, dict(targets)))
    if output_size is not None:
        image, targets = random_scale_crop(image, targets, seeds[1], tuple(output_size),
                                           scale_range, min_visibility)
    if color_jitter_strength:
        j = float(color_jitter_strength)
        image = color_jitter(image, seeds[2], 0.2 * j, 0.3 * j, 0.3 * j, 0.05 * j)
    return image, targets


def augment_dataset(ds, seed, output_size, **kwargs):
    """Maps `augment_detection` over an unbatched dataset of `(image, targets)`, with a new
    stateless seed per example drawn from `seed` (new draws each epoch).

    Args:
        ds: `tf.data.Dataset` of single examples.
        seed: Python int.
        output_size: `(out_h, out_w)` or None (see `augment_detection`).
        **kwargs: passed to `augment_detection`.

    Returns:
        The mapped dataset.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda example, s: augment_detection(example[0], example[1], s, output_size, **kwargs),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
