"""Seeded synthetic detection data: the shapes of `kcv.data.synthetic` with their tight boxes.

Each image holds `min_objects`..`max_objects` shapes of three classes, ellipse = 0,
rectangle = 1, triangle = 2 (contiguous ids, no background id), drawn one over another on the
same textured, noisy background as `kcv.data.make_shapes`. Object sizes are log-uniform between
6 pixels and 60% of the image side, so many objects are small (6-12 px, where detectors
struggle); centres may lie close to the border, so objects are cut by it; later shapes partly
cover earlier ones, but a shape is only placed when every object keeps at least `min_visible`
of its pixels. A box is the tight box of the object's visible pixels.

Conventions (shared by all of kcv's detection data): boxes are `[y1, x1, y2, x2]` in absolute
pixels of the image (pixel `(r, c)` covers `[r, r + 1] x [c, c + 1]`, so a one-pixel object at
row 3, column 5 has the box `[3, 5, 4, 6]`); a batch of targets is
`{"boxes": float32 [B, M, 4], "classes": int32 [B, M]}` padded at the end with class -1 and
zero boxes to a fixed `M = max_boxes`.
"""

import numpy as np
import tensorflow as tf

from kcv.data.box_augment import augment_dataset
from kcv.data.synthetic import _background, _finish, _shape_fill, _shape_region

CLASS_NAMES = ("ellipse", "rectangle", "triangle")
NUM_CLASSES = len(CLASS_NAMES)
_MIN_SIZE = 6.0  # smallest object extent in pixels
_MAX_FRACTION = 0.6  # largest object extent as a fraction of the image side
_MIN_PIXELS = 9  # a drawn object keeps at least this many visible pixels
_TRIES = 20  # candidate placements per object before giving up on it


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check(num_images, image_size, min_objects, max_objects, max_boxes, min_visible, noise):
    if not _is_int(num_images) or num_images < 0:
        raise ValueError(f"`num_images` must be a non-negative int. Received: "
                         f"num_images={num_images!r}")
    if not _is_int(image_size) or image_size < 32:
        raise ValueError(f"`image_size` must be an int >= 32. Received: image_size={image_size!r}")
    if not (_is_int(min_objects) and _is_int(max_objects) and 0 <= min_objects <= max_objects):
        raise ValueError(
            "`min_objects` and `max_objects` must be ints with 0 <= min_objects <= max_objects. "
            f"Received: min_objects={min_objects!r}, max_objects={max_objects!r}"
        )
    if not _is_int(max_boxes) or max_boxes < max(max_objects, 1):
        raise ValueError(f"`max_boxes` must be an int >= max_objects ({max_objects}). "
                         f"Received: max_boxes={max_boxes!r}")
    if not 0 < min_visible <= 1:
        raise ValueError(f"`min_visible` must be in (0, 1]. Received: min_visible={min_visible!r}")
    if not 0 <= noise <= 1:
        raise ValueError(f"`noise` must be in [0, 1]. Received: noise={noise!r}")


def _place(rng, kind, size, grid, owner, drawn, min_visible):
    """A region for a new object of class `kind` that leaves every earlier object (`owner`
    holds object indices, -1 background; `drawn` their pixel counts) `min_visible` of its
    pixels, or None after `_TRIES` candidates."""
    log_min, log_max = np.log(_MIN_SIZE), np.log(_MAX_FRACTION * size)
    for _ in range(_TRIES):
        radius = np.exp(rng.uniform(log_min, log_max)) / 2
        cy, cx = rng.uniform(0.3 * radius, size - 0.3 * radius, size=2)
        region = _shape_region(rng, kind + 1, cy, cx, radius, grid)
        if region.sum() < _MIN_PIXELS:
            continue
        left = np.bincount(owner[~region & (owner >= 0)], minlength=len(drawn))
        if all(v >= max(min_visible * d, _MIN_PIXELS) for v, d in zip(left, drawn)):
            return region
    return None


def _tight_boxes(owner, count):
    """`[count, 4]` float32 tight boxes `[y1, x1, y2, x2]` of each object's visible pixels."""
    boxes = np.zeros((count, 4), np.float32)
    for k in range(count):
        rows, cols = np.nonzero(owner == k)
        boxes[k] = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    return boxes


def make_shapes_detection(num_images, image_size=128, seed=0, min_objects=1, max_objects=6,
                          max_boxes=16, min_visible=0.5, noise=0.08, return_masks=False):
    """Generates the synthetic detection shapes as NumPy arrays.

    Args:
        num_images: how many images.
        image_size: height and width in pixels (>= 32).
        seed: the seed; the same seed gives the same data.
        min_objects, max_objects: how many objects to draw per image (inclusive range). An
            object that finds no place leaving every object `min_visible` of its pixels after
            20 tries is left out, so an image may rarely hold fewer than `min_objects`.
        max_boxes: `M`, the padded number of boxes per image (>= `max_objects`).
        min_visible: the fraction of its pixels every object keeps visible under later ones.
        noise: standard deviation of the Gaussian pixel noise (images are clipped to [0, 1]).
        return_masks: also return each object's visible pixels as `targets["masks"]`, bool
            `[N, M, S, S]` (all False for padding).

    Returns:
        `(images, targets)`: `images` float32 `[N, S, S, 3]` in [0, 1]; `targets` a dict with
        `"boxes"` float32 `[N, M, 4]` (`[y1, x1, y2, x2]` pixels, tight around the visible
        pixels) and `"classes"` int32 `[N, M]` (0 ellipse, 1 rectangle, 2 triangle), padded with
        class -1 and zero boxes.

    Example:
        >>> images, targets = make_shapes_detection(2, image_size=64, seed=0)
        >>> images.shape, targets["boxes"].shape, targets["classes"].shape
        ((2, 64, 64, 3), (2, 16, 4), (2, 16))
    """
    _check(num_images, image_size, min_objects, max_objects, max_boxes, min_visible, noise)
    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    images = np.empty((num_images, image_size, image_size, 3), np.float32)
    boxes = np.zeros((num_images, max_boxes, 4), np.float32)
    classes = np.full((num_images, max_boxes), -1, np.int32)
    masks = np.zeros((num_images, max_boxes, image_size, image_size), bool) if return_masks else None
    for n in range(num_images):
        base, image = _background(rng, image_size, grid)
        owner = np.full((image_size, image_size), -1, np.int64)
        drawn, kinds = [], []
        for _ in range(rng.integers(min_objects, max_objects + 1)):
            kind = int(rng.integers(0, NUM_CLASSES))
            region = _place(rng, kind, image_size, grid, owner, drawn, min_visible)
            if region is None:
                continue
            fill = _shape_fill(rng, base, image_size, grid)
            image[region] = fill[region]
            owner[region] = len(drawn)
            drawn.append(int(region.sum()))
            kinds.append(kind)
        images[n] = _finish(rng, image, noise)
        boxes[n, :len(kinds)] = _tight_boxes(owner, len(kinds))
        classes[n, :len(kinds)] = kinds
        if return_masks:
            masks[n, :len(kinds)] = owner[None] == np.arange(len(kinds))[:, None, None]
    targets = {"boxes": boxes, "classes": classes}
    if return_masks:
        targets["masks"] = masks
    return images, targets


def shapes_detection_dataset(num_images, image_size=128, batch_size=8, seed=0, min_objects=1,
                             max_objects=6, max_boxes=16, shuffle=True, repeat=False,
                             augment=False, min_visible=0.5, noise=0.08, **augment_kwargs):
    """The synthetic detection shapes as a batched, prefetched `tf.data.Dataset`.

    Args:
        num_images, image_size, seed, min_objects, max_objects, max_boxes, min_visible, noise:
            as `make_shapes_detection`.
        batch_size: batch size.
        shuffle: shuffle every epoch (seeded, so still deterministic for a seed).
        repeat: repeat forever.
        augment: apply `kcv.data.augment_detection` (flip, scale jitter with crop/pad back to
            `image_size`, colour jitter) to every example, seeded by `seed`.
        **augment_kwargs: passed to `kcv.data.augment_detection` (e.g. `scale_range`,
            `min_visibility`, `color_jitter`).

    Returns:
        A `tf.data.Dataset` yielding `(images float32 [B, S, S, 3] in [0, 1], targets)` with
        `targets = {"boxes": float32 [B, M, 4], "classes": int32 [B, M]}`.

    Example:
        >>> ds = shapes_detection_dataset(16, image_size=64, batch_size=8, seed=0)
        >>> images, targets = next(iter(ds))
        >>> images.shape, targets["boxes"].shape
        (TensorShape([8, 64, 64, 3]), TensorShape([8, 16, 4]))
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    images, targets = make_shapes_detection(num_images, image_size, seed, min_objects,
                                            max_objects, max_boxes, min_visible, noise)
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle:
        ds = ds.shuffle(max(len(images), 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        ds = augment_dataset(ds, seed, (image_size, image_size), **augment_kwargs)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
