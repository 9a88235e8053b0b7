"""Image/mask folders as a tf.data pipeline: matched by name, decoded and augmented in tf.data."""

import os

import tensorflow as tf

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MASK_EXTENSIONS = (".png",)


def _list(directory, extensions, argument):
    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise ValueError(f"`{argument}` must be an existing directory. Received: "
                         f"{argument}={directory!r}")
    files = {}
    for entry in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in extensions:
            continue
        if stem in files:
            raise ValueError(f"Two files in {directory} share the name {stem!r}: "
                             f"{os.path.basename(files[stem])} and {entry}")
        files[stem] = os.path.join(directory, entry)
    return files


def _pairs(images_dir, masks_dir):
    images = _list(images_dir, _IMAGE_EXTENSIONS, "images_dir")
    masks = _list(masks_dir, _MASK_EXTENSIONS, "masks_dir")
    lonely_images = sorted(os.path.basename(images[s]) for s in set(images) - set(masks))
    lonely_masks = sorted(os.path.basename(masks[s]) for s in set(masks) - set(images))
    if lonely_images or lonely_masks:
        raise ValueError(
            "Every image needs a mask of the same name (and the reverse). Images without a mask "
            f"in {masks_dir}: {lonely_images}; masks without an image in {images_dir}: "
            f"{lonely_masks}"
        )
    if not images:
        raise ValueError(f"No PNG/JPEG images in `images_dir`. Received: images_dir={images_dir!r}")
    stems = sorted(images)
    return [images[s] for s in stems], [masks[s] for s in stems]


def _decode_image(contents, channels=3):
    """A PNG or JPEG as uint8 (JPEG with the accurate integer DCT, as libjpeg/Pillow default)."""
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(contents, channels),
    )


def _decode_mask(contents, channels=0):
    """A PNG of class indices as int32, 8- or 16-bit (byte 24 of a PNG, in IHDR, is the bit
    depth; `decode_png(dtype=uint16)` would rescale 8-bit values by 257)."""
    depth = tf.io.decode_raw(tf.strings.substr(contents, 24, 1), tf.uint8)[0]
    return tf.cond(
        depth == 16,
        lambda: tf.cast(tf.io.decode_png(contents, channels, dtype=tf.uint16), tf.int32),
        lambda: tf.cast(tf.io.decode_png(contents, channels, dtype=tf.uint8), tf.int32),
    )


def _reason(err):
    return err.message if isinstance(err, tf.errors.OpError) else type(err).__name__


def _validate(image_paths, mask_paths, num_classes, ignore_index):
    """Decodes every pair once, eagerly, so that a bad file raises an error naming it."""
    for image_path, mask_path in zip(image_paths, mask_paths):
        try:
            image = _decode_image(tf.io.read_file(image_path), channels=0)
        except Exception as err:  # TF raises OpErrors, or UnicodeDecodeError on binary logs
            raise ValueError(f"Cannot decode the image file {image_path}: {_reason(err)}") from None
        try:
            mask = _decode_mask(tf.io.read_file(mask_path))
        except Exception as err:
            raise ValueError(f"Cannot decode the mask file {mask_path}: {_reason(err)}") from None
        if image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"The image file {image_path} has {image.shape[-1]} channels; "
                             "expected 1, 3 or 4.")
        if mask.shape[-1] != 1:
            raise ValueError(f"The mask file {mask_path} has {mask.shape[-1]} channels; masks "
                             "must be single-channel PNGs of class indices.")
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"The mask file {mask_path} is {tuple(mask.shape[:2])} but its image "
                             f"{image_path} is {tuple(image.shape[:2])} (height, width).")
        if num_classes is not None:
            values = tf.unique(tf.reshape(mask, [-1]))[0].numpy()
            bad = sorted(int(v) for v in values if v >= num_classes and v != ignore_index)
            if bad:
                raise ValueError(
                    f"The mask file {mask_path} holds values {bad[:10]} outside the classes "
                    f"0..{num_classes - 1} (num_classes={num_classes}, "
                    f"ignore_index={ignore_index})."
                )


def _load(image_path, mask_path, size, num_classes, ignore_index):
    image = _decode_image(tf.io.read_file(image_path))
    image = tf.image.convert_image_dtype(image, tf.float32)
    mask = _decode_mask(tf.io.read_file(mask_path), channels=1)
    if num_classes is not None:  # run-time check as well: the files may change after listing
        ok = tf.reduce_all((mask < num_classes) | (mask == (-1 if ignore_index is None
                                                            else ignore_index)))
        with tf.control_dependencies([tf.debugging.Assert(ok, ["mask values outside the "
                                                                "classes in", mask_path])]):
            mask = tf.identity(mask)
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    mask = tf.image.resize(mask, size, method="nearest")
    image = tf.ensure_shape(image, (*size, 3))
    mask = tf.ensure_shape(mask, (*size, 1))
    return image, mask


def _augment(image, mask, seed, size, scale_range, jitter):
    """Flips, 90-degree rotations and scale-and-crop applied alike to image and mask (mask by
    nearest neighbour), colour jitter on the image only; stateless ops seeded by `seed`."""
    seeds = tf.random.experimental.stateless_split(seed, num=9)
    joint = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    joint = tf.image.stateless_random_flip_left_right(joint, seeds[0])
    joint = tf.image.stateless_random_flip_up_down(joint, seeds[1])
    square = size[0] == size[1]  # a non-square image keeps its shape only at 0 or 180 degrees
    k = tf.random.stateless_uniform([], seeds[2], 0, 4 if square else 2, dtype=tf.int32)
    joint = tf.image.rot90(joint, k if square else 2 * k)
    scale = tf.random.stateless_uniform([], seeds[3], scale_range[0], scale_range[1])
    scaled = tf.cast(tf.math.ceil(scale * tf.constant(size, tf.float32)), tf.int32)
    big_image = tf.image.resize(joint[..., :3], scaled, method="bilinear")
    big_mask = tf.image.resize(joint[..., 3:], scaled, method="nearest")
    joint = tf.image.stateless_random_crop(tf.concat([big_image, big_mask], -1), (*size, 4),
                                           seeds[4])
    image, mask = joint[..., :3], tf.cast(tf.round(joint[..., 3]), tf.int32)
    if jitter:
        image = tf.image.stateless_random_brightness(image, 0.2 * jitter, seeds[5])
        image = tf.image.stateless_random_contrast(image, 1 - 0.3 * jitter, 1 + 0.3 * jitter,
                                                   seeds[6])
        image = tf.image.stateless_random_saturation(image, 1 - 0.3 * jitter, 1 + 0.3 * jitter,
                                                     seeds[7])
        image = tf.image.stateless_random_hue(image, 0.05 * jitter, seeds[8])
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image, mask


def segmentation_folder(images_dir, masks_dir, image_size, batch_size, augment=True,
                        num_classes=None, ignore_index=None, shuffle=True, seed=0,
                        scale_range=(1.0, 1.5), color_jitter=1.0, cache=True, validate=True):
    """Image/mask pairs from two folders as a batched, cached and prefetched `tf.data.Dataset`.

    Images (PNG or JPEG, grey, RGB or RGBA, converted to RGB) in `images_dir` are paired with
    the single-channel PNG masks of class indices (8 or 16 bit) in `masks_dir` that have the
    same file name without extension (`a.jpg` with `a.png`). Decoding, resizing to `image_size`
    (bilinear for images, nearest neighbour for masks), caching and augmentation all run in
    tf.data. Augmentation applies the same random horizontal/vertical flip, 90-degree rotation
    (0 or 180 degrees when the size is not square) and random scale-up-and-crop to image and
    mask (the mask by nearest neighbour, so it keeps its class values), and colour jitter
    (brightness, contrast, saturation, hue) to the image only. Augmentations are stateless and
    seeded: the same `seed` gives the same batches, and each epoch draws new ones.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks.
        image_size: output `(height, width)` or an int for a square.
        batch_size: batch size.
        augment: apply the augmentations (use `False` for validation data).
        num_classes: when given, masks holding a value `>= num_classes` (other than
            `ignore_index`) raise an error naming the file.
        ignore_index: a mask value allowed beyond `num_classes` (e.g. 255 for "void").
        shuffle: shuffle the pairs every epoch.
        seed: seed of shuffling and augmentation.
        scale_range: `(low, high)` zoom factors, `1 <= low <= high`, of the scale-and-crop.
        color_jitter: strength of the colour jitter (0 switches it off; 1: brightness 0.2,
            contrast and saturation 0.7..1.3, hue 0.05).
        cache: cache the decoded, resized pairs in memory after the first epoch.
        validate: decode every file once when the dataset is made, so that an unreadable file,
            a mask of the wrong size or channels, or a mask value out of range raises a
            `ValueError` naming the file (without it, such files fail during iteration).

    Returns:
        A `tf.data.Dataset` of `(images float32 [B, H, W, 3] in [0, 1], masks int32 [B, H, W])`.

    Raises:
        ValueError: a missing directory, an image without a mask or a mask without an image
            (listed by name), an unreadable file, a mask with values outside `num_classes`.

    Example:
        >>> for folder in ("data/images", "data/masks"):
        ...     os.makedirs(folder)
        >>> for i in range(4):
        ...     image = tf.io.encode_png(tf.fill([40, 40, 3], tf.constant(i * 60, tf.uint8)))
        ...     mask = tf.io.encode_png(tf.fill([40, 40, 1], tf.constant(i, tf.uint8)))
        ...     tf.io.write_file(f"data/images/{i}.png", image)
        ...     tf.io.write_file(f"data/masks/{i}.png", mask)
        >>> train = segmentation_folder("data/images", "data/masks", 32, 2, num_classes=4)
        >>> images, masks = next(iter(train))
        >>> images.shape, masks.shape, masks.dtype.name
        (TensorShape([2, 32, 32, 3]), TensorShape([2, 32, 32]), 'int32')
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError("`image_size` must be a positive int or (height, width). "
                         f"Received: image_size={image_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"`num_classes` must be a positive int or None. "
                         f"Received: num_classes={num_classes!r}")
    low, high = scale_range
    if not 1.0 <= low <= high:
        raise ValueError(f"`scale_range` must be (low, high) with 1 <= low <= high. "
                         f"Received: scale_range={scale_range!r}")
    if color_jitter < 0:
        raise ValueError(f"`color_jitter` must be >= 0. Received: color_jitter={color_jitter!r}")
    image_paths, mask_paths = _pairs(images_dir, masks_dir)
    if validate:
        _validate(image_paths, mask_paths, num_classes, ignore_index)

    ds = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    ds = ds.map(lambda i, m: _load(i, m, size, num_classes, ignore_index),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _augment(pair[0], pair[1], s, size, (float(low), float(high)),
                                     float(color_jitter)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda image, mask: (image, mask[..., 0]))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
