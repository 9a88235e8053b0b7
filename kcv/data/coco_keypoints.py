"""COCO person-keypoints files (`person_keypoints_*.json`) as a tf.data pipeline.

An annotation holds `keypoints` `[x1, y1, v1, ..., x17, y17, v17]` (v = 0 not labelled,
1 labelled but not visible, 2 visible), `num_keypoints`, `bbox` `[x, y, w, h]` and `iscrowd`.
People with `num_keypoints = 0` are kept with visibility 0 (so that
`kcv.data.keypoints.keypoint_weights` masks them in the loss, as OpenPose does); crowd regions
are left out.

Reference:
    Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the keypoint format at
    https://cocodataset.org/#format-data.
"""

import os

import numpy as np
import tensorflow as tf

from kcv.data.coco import _read_json, annotation_record, image_records
from kcv.data.folder import _decode_image

__all__ = ["coco_keypoints"]

_NUM_KEYPOINTS = 17


def _keypoint_records(annotations_json, images_dir, max_people):
    data = _read_json(annotations_json)
    images = image_records(data, annotations_json, images_dir, people=[])
    for ann in data["annotations"]:
        where, record = annotation_record(images, ann, annotations_json)
        if ann.get("iscrowd", 0):
            continue
        flat = ann.get("keypoints")
        if not isinstance(flat, list) or len(flat) != 3 * _NUM_KEYPOINTS:
            raise ValueError(f"{where} needs 51 `keypoints` values (17 x, y, v). Received: "
                             f"{None if flat is None else len(flat)} values")
        x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        record["people"].append((np.asarray(flat, np.float32).reshape(_NUM_KEYPOINTS, 3),
                                 (y, x, y + h, x + w)))
    for r in images.values():
        if len(r["people"]) > max_people:
            raise ValueError(f"The image {r['path']} has {len(r['people'])} people, more than "
                             f"`max_people`={max_people}.")
    return list(images.values())


def coco_keypoints(annotations_json, images_dir, image_size, batch_size=8, max_people=20,
                   shuffle=True, seed=0):
    """A COCO person-keypoints file and its images as a batched `tf.data.Dataset`.

    Images are resized to `image_size` (aspect not kept) and the keypoints and boxes scaled
    with them (`new / old` per axis).

    Args:
        annotations_json: path of the COCO keypoints JSON file.
        images_dir: folder holding the images' `file_name`s.
        image_size: output `(height, width)`, or an int for a square.
        batch_size: batch size.
        max_people: `P`, the padded number of people; an image with more raises an error.
        shuffle: shuffle every epoch (seeded).
        seed: the shuffling seed.

    Returns:
        A `tf.data.Dataset` of `(images float32 [B, H, W, 3] in [0, 1], targets)` with
        `targets = {"keypoints" float32 [B, P, 17, 2], "visibility" int32 [B, P, 17],
        "boxes" float32 [B, P, 4]}` (`[y1, x1, y2, x2]`), padded with visibility 0 and zero
        boxes.

    Raises:
        ValueError: a bad argument (named), or a problem in the file naming the file and the
            image or annotation id.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                             for s in size):
        raise ValueError(f"`image_size` must be a positive int or (height, width). Received: "
                         f"image_size={image_size!r}")
    for name, value in (("batch_size", batch_size), ("max_people", max_people)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if not isinstance(images_dir, (str, os.PathLike)) or not os.path.isdir(images_dir):
        raise ValueError(f"`images_dir` must be an existing directory. Received: "
                         f"images_dir={images_dir!r}")
    records = _keypoint_records(annotations_json, images_dir, max_people)
    if not records:
        raise ValueError(f"No images in {annotations_json}.")
    keypoints = np.zeros((len(records), max_people, _NUM_KEYPOINTS, 3), np.float32)
    boxes = np.zeros((len(records), max_people, 4), np.float32)
    for n, r in enumerate(records):
        for p, (kp, box) in enumerate(r["people"]):
            keypoints[n, p], boxes[n, p] = kp, box

    def load(path, kp, box):
        image = _decode_image(tf.io.read_file(path))
        old = tf.cast(tf.shape(image)[:2], tf.float32)
        image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), size)
        scale_y, scale_x = size[0] / old[0], size[1] / old[1]
        xy = kp[..., :2] * tf.stack([scale_x, scale_y])
        visibility = tf.cast(kp[..., 2], tf.int32)
        xy = tf.where(visibility[..., None] > 0, xy, 0.0)
        box = box * tf.stack([scale_y, scale_x, scale_y, scale_x])
        return tf.ensure_shape(image, (*size, 3)), {"keypoints": xy, "visibility": visibility,
                                                    "boxes": box}

    ds = tf.data.Dataset.from_tensor_slices(([r["path"] for r in records], keypoints, boxes))
    if shuffle:
        ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
