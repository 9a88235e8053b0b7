"""Seeded synthetic segmentation data: filled shapes over noisy, textured backgrounds.

Each image holds `min_shapes`..`max_shapes` shapes of three classes drawn one over another:
1 = ellipse, 2 = rectangle, 3 = triangle (0 = background). Shapes are rotated and sized at
random, filled with a random colour plus texture, and the background is a random colour field
with sinusoidal texture and pixel noise, so colour alone does not give the class: a model has to
learn the shapes. The same `seed` always gives the same images.
"""

import numpy as np
import tensorflow as tf

CLASS_NAMES = ("background", "ellipse", "rectangle", "triangle")
NUM_CLASSES = len(CLASS_NAMES)


def _check(num_images, image_size, min_shapes, max_shapes, noise):
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"`num_images` must be a non-negative int. Received: {num_images!r}")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"`image_size` must be an int >= 16. Received: image_size={image_size!r}")
    if not (isinstance(min_shapes, int) and isinstance(max_shapes, int)
            and 0 <= min_shapes <= max_shapes):
        raise ValueError(
            "`min_shapes` and `max_shapes` must be ints with 0 <= min_shapes <= max_shapes. "
            f"Received: min_shapes={min_shapes!r}, max_shapes={max_shapes!r}"
        )
    if not 0 <= noise <= 1:
        raise ValueError(f"`noise` must be in [0, 1]. Received: noise={noise!r}")


def _texture(rng, size, channels, grid):
    """Sum of random oriented sinusoids: a smooth texture in [-1, 1], [size, size, channels]."""
    yy, xx = grid
    out = np.zeros((size, size, channels), np.float32)
    for _ in range(3):
        freq = rng.uniform(0.05, 0.35)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        out += wave[..., None] * rng.uniform(0.3, 1.0, size=channels)
    return out / 3.0


def _shape_region(rng, kind, cy, cx, radius, grid):
    """Boolean mask of one shape of class `kind` (1 ellipse, 2 rectangle, 3 triangle) centred
    at `(cy, cx)` with half-size `radius` pixels; its orientation and proportions drawn from
    `rng`."""
    yy, xx = grid
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    if kind == 1:  # ellipse
        a, b = radius, radius * rng.uniform(0.55, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 2:  # rectangle
        a, b = radius, radius * rng.uniform(0.55, 1.0)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: three vertices at spread angles around the centre
    angles = theta + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
    py = cy + radius * 1.2 * np.sin(angles)
    px = cx + radius * 1.2 * np.cos(angles)
    inside = np.ones_like(xx, dtype=bool)
    sign = None
    for i in range(3):
        j = (i + 1) % 3
        cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
        s = np.sign((px[j] - px[i]) * (py[(i + 2) % 3] - py[i])
                    - (py[j] - py[i]) * (px[(i + 2) % 3] - px[i]))
        sign = s if sign is None else sign
        inside &= cross * s >= 0
    return inside


def _shape_mask(rng, kind, size, grid):
    radius = rng.uniform(0.1, 0.22) * size
    cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
    return _shape_region(rng, kind, cy, cx, radius, grid)


def _background(rng, size, grid):
    """A random base colour `[3]` and the textured background image `[size, size, 3]`."""
    base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    return base, base + 0.18 * _texture(rng, size, 3, grid)


def _shape_fill(rng, base, size, grid):
    """A textured fill `[size, size, 3]` whose colour differs from `base` by >= 0.3 somewhere."""
    colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    while np.abs(colour - base).max() < 0.3:  # keep the shape visible
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    return colour + 0.08 * _texture(rng, size, 3, grid)


def _finish(rng, image, noise):
    """Adds Gaussian pixel noise and clips to [0, 1]."""
    image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def make_shapes(num_images, image_size=64, seed=0, min_shapes=1, max_shapes=3, noise=0.08):
    """Generates the synthetic shapes data set as NumPy arrays.

    Args:
        num_images: how many images.
        image_size: height and width in pixels (>= 16).
        seed: the seed; the same seed gives the same data.
        min_shapes, max_shapes: how many shapes per image (inclusive range).
        noise: standard deviation of the Gaussian pixel noise (images are clipped to [0, 1]).

    Returns:
        `(images, masks)`: float32 `[N, S, S, 3]` in [0, 1] and int32 `[N, S, S]` with values in
        {0: background, 1: ellipse, 2: rectangle, 3: triangle}.

    Example:
        >>> images, masks = make_shapes(8, image_size=64, seed=0)
        >>> images.shape, masks.shape, sorted(set(masks.ravel().tolist())) <= [0, 1, 2, 3]
        ((8, 64, 64, 3), (8, 64, 64), True)
    """
    _check(num_images, image_size, min_shapes, max_shapes, noise)
    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    images = np.empty((num_images, image_size, image_size, 3), np.float32)
    masks = np.zeros((num_images, image_size, image_size), np.int32)
    for n in range(num_images):
        base, image = _background(rng, image_size, grid)
        mask = masks[n]
        for _ in range(rng.integers(min_shapes, max_shapes + 1)):
            kind = int(rng.integers(1, NUM_CLASSES))
            region = _shape_mask(rng, kind, image_size, grid)
            fill = _shape_fill(rng, base, image_size, grid)
            image[region] = fill[region]
            mask[region] = kind
        images[n] = _finish(rng, image, noise)
    return images, masks


def shapes_dataset(num_images, image_size=64, batch_size=8, seed=0, min_shapes=1, max_shapes=3,
                   noise=0.08, shuffle=True, repeat=False, one_hot=False):
    """The synthetic shapes as a batched, prefetched `tf.data.Dataset` of `(image, mask)`.

    Args:
        num_images, image_size, seed, min_shapes, max_shapes, noise: as `make_shapes`.
        batch_size: batch size.
        shuffle: shuffle every epoch (seeded, so still deterministic for a seed).
        repeat: repeat forever.
        one_hot: give masks as one-hot float32 `[S, S, 4]` instead of int32 `[S, S]`.

    Returns:
        A `tf.data.Dataset` yielding `(images float32 [B, S, S, 3], masks)`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    images, masks = make_shapes(num_images, image_size, seed, min_shapes, max_shapes, noise)
    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if one_hot:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, NUM_CLASSES)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
