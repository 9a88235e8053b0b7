"""COCO instances files (`instances_*.json`) as detection data, and writing data as COCO.

A COCO file has `images` (`id`, `file_name`, `height`, `width`), `annotations` (`id`,
`image_id`, `category_id`, `bbox` `[x, y, width, height]` in pixels, `iscrowd`, `area`) and
`categories` (`id`, `name`) whose ids need not be contiguous (COCO's 80 classes use ids 1..90).
kcv's detection data uses contiguous classes `0..C-1` in the order of increasing category id
and `[y1, x1, y2, x2]` pixel boxes; `coco_categories` gives the mapping both ways, so that
detections can be written back with the original ids (`detections_to_coco`).

Reference:
    Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the data format at
    https://cocodataset.org/#format-data.
"""

import json
import os

import numpy as np
import tensorflow as tf

from kcv.data.box_augment import augment_dataset, pad_targets, resize_detection
from kcv.data.folder import _decode_image

_BOX_TOLERANCE = 1.0  # pixels a COCO box may stick out of its image (rounding in the files)


class CocoCategories:
    """The mapping between COCO category ids and kcv's contiguous classes `0..C-1`.

    Class `c` is the `c`-th category in order of increasing id.

    Args:
        categories: the `categories` list of a COCO file (dicts with `id` and `name`).

    Example:
        >>> cats = CocoCategories([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}])
        >>> cats.category_ids, cats.names
        ((3, 7), ('a', 'b'))
        >>> cats.to_classes([7, 3]), cats.to_category_ids([0, 1])
        (array([1, 0], dtype=int32), array([3, 7]))
    """

    def __init__(self, categories):
        ordered = sorted(categories, key=lambda c: c["id"])
        self.category_ids = tuple(int(c["id"]) for c in ordered)
        self.names = tuple(str(c.get("name", c["id"])) for c in ordered)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"Category ids must be unique. Received: {list(self.category_ids)}")
        self._class_of = {cid: k for k, cid in enumerate(self.category_ids)}

    @property
    def num_classes(self):
        return len(self.category_ids)

    def to_classes(self, category_ids):
        """Contiguous class ids (int32) of COCO category ids; unknown ids raise `ValueError`."""
        ids = np.asarray(category_ids).reshape(-1)
        unknown = sorted({int(i) for i in ids} - set(self._class_of))
        if unknown:
            raise ValueError(f"Unknown category ids {unknown}; the categories are "
                             f"{list(self.category_ids)}.")
        return np.array([self._class_of[int(i)] for i in ids], np.int32).reshape(
            np.shape(category_ids))

    def to_category_ids(self, classes):
        """COCO category ids (int64) of contiguous class ids."""
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"`classes` must be in [0, {self.num_classes}). Received: classes "
                             f"in [{classes.min()}, {classes.max()}]")
        return np.asarray(self.category_ids, np.int64)[classes.astype(np.int64)]

    def __repr__(self):
        return f"CocoCategories(category_ids={self.category_ids}, names={self.names})"


def _read_json(annotations_json):
    if not isinstance(annotations_json, (str, os.PathLike)) or not os.path.isfile(annotations_json):
        raise ValueError(f"`annotations_json` must be an existing file. Received: "
                         f"annotations_json={annotations_json!r}")
    try:
        with open(annotations_json, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the COCO file {annotations_json}: {err}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"The COCO file {annotations_json} has no {missing} (an instances file "
                         "needs `images`, `annotations` and `categories`).")
    return data


def coco_categories(annotations_json):
    """The `CocoCategories` (category id <-> contiguous class) of a COCO instances file.

    Example:
        >>> import kcv
        >>> _ = write_coco_json("shapes.json", "shapes", kcv.data.make_shapes_detection(2, 64),
        ...                     ["ellipse", "rectangle", "triangle"], category_ids=[3, 7, 12])
        >>> cats = coco_categories("shapes.json")
        >>> cats.num_classes, cats.category_ids
        (3, (3, 7, 12))
    """
    return CocoCategories(_read_json(annotations_json)["categories"])


def image_records(data, annotations_json, images_dir, **fields):
    """`{image id: {"path", "size" (height, width), **fields}}` of a COCO file's `images`,
    each image checked to exist in `images_dir` (`fields` are copied per image)."""
    images = {}
    for image in data["images"]:
        missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if missing:
            raise ValueError(f"An image of {annotations_json} has no {missing}. Received: "
                             f"{image!r}")
        path = os.path.join(images_dir, image["file_name"])
        if not os.path.isfile(path):
            raise ValueError(f"Image id {image['id']} of {annotations_json}: no such file {path}")
        images[image["id"]] = {"path": path, "size": (int(image["height"]), int(image["width"])),
                               **{k: list(v) for k, v in fields.items()}}
    return images


def annotation_record(images, ann, annotations_json):
    """`(where, record)`: the annotation's description for errors and its image's record."""
    where = f"Annotation id {ann.get('id')} in {annotations_json}"
    record = images.get(ann.get("image_id"))
    if record is None:
        raise ValueError(f"{where} refers to image_id {ann.get('image_id')!r}, which is not "
                         "in `images`.")
    return where, record


def _records(annotations_json, images_dir, max_boxes, drop_empty):
    """Per image: path, id, (height, width), `[n, 4]` yxyx boxes and `[n]` classes, checked."""
    data = _read_json(annotations_json)
    categories = CocoCategories(data["categories"])
    images = image_records(data, annotations_json, images_dir, boxes=[], classes=[])
    for ann in data["annotations"]:
        where, record = annotation_record(images, ann, annotations_json)
        if ann.get("category_id") not in categories._class_of:
            raise ValueError(f"{where} has the unknown category_id {ann.get('category_id')!r} "
                             f"(categories: {list(categories.category_ids)}).")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{where} has no [x, y, width, height] bbox. Received: bbox={bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        height, width = record["size"]
        if (x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE or x + w > width + _BOX_TOLERANCE
                or y + h > height + _BOX_TOLERANCE):
            raise ValueError(f"{where}: the box [x, y, w, h]={list(bbox)} lies outside its image "
                             f"{record['path']} of (height, width)={record['size']}.")
        if ann.get("iscrowd", 0):
            continue  # crowd regions are for evaluation, not training targets
        y1, x1 = max(y, 0.0), max(x, 0.0)
        y2, x2 = min(y + h, height), min(x + w, width)
        if y2 <= y1 or x2 <= x1:
            continue  # degenerate box
        record["boxes"].append((y1, x1, y2, x2))
        record["classes"].append(categories._class_of[ann["category_id"]])
    records = [(image_id, r) for image_id, r in images.items() if r["classes"] or not drop_empty]
    for _, r in records:
        if len(r["classes"]) > max_boxes:
            raise ValueError(f"The image {r['path']} has {len(r['classes'])} boxes, more than "
                             f"`max_boxes`={max_boxes}.")
    return records, categories


def _torchvision_size(size, min_size, max_size):
    """Output `(h, w)` of torchvision's GeneralizedRCNNTransform resize: the float32 scale
    `min(min_size / short side, max_size / long side)`, then `floor(side * scale)` in float64
    (`interpolate(scale_factor=..., recompute_scale_factor=True)`)."""
    size32 = tf.cast(size, tf.float32)
    scale = tf.cast(min_size, tf.float32) / tf.reduce_min(size32)
    if max_size is not None:
        scale = tf.minimum(scale, tf.cast(max_size, tf.float32) / tf.reduce_max(size32))
    out = tf.floor(tf.cast(size, tf.float64) * tf.cast(scale, tf.float64))
    return tf.cast(out, tf.int32)


def _check_size_arguments(image_size, min_size, max_size, size_divisible):
    if image_size is not None:
        if min_size is not None or max_size is not None:
            raise ValueError("Give either `image_size` (fixed output size) or `min_size`/"
                             f"`max_size` (torchvision's rule). Received: image_size={image_size!r}"
                             f", min_size={min_size!r}, max_size={max_size!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                 for s in size):
            raise ValueError("`image_size` must be a positive int or (height, width). "
                             f"Received: image_size={image_size!r}")
        return size, None
    if max_size is not None and min_size is None:
        raise ValueError(f"`max_size` needs `min_size`. Received: max_size={max_size!r}")
    sizes = None
    if min_size is not None:
        sizes = (min_size,) if isinstance(min_size, (int, float)) else tuple(min_size)
        if not sizes or any(isinstance(s, bool) or not s > 0 for s in sizes):
            raise ValueError("`min_size` must be a positive number or a tuple of them. "
                             f"Received: min_size={min_size!r}")
        if max_size is not None and not max_size >= max(sizes):
            raise ValueError(f"`max_size` must be >= min_size. Received: max_size={max_size!r}, "
                             f"min_size={min_size!r}")
    if isinstance(size_divisible, bool) or not isinstance(size_divisible, int) or size_divisible < 1:
        raise ValueError(f"`size_divisible` must be a positive int. Received: "
                         f"size_divisible={size_divisible!r}")
    return None, sizes


def coco_detection(annotations_json, images_dir, batch_size=8, image_size=None, min_size=None,
                   max_size=None, size_divisible=32, augment=False, max_boxes=100,
                   shuffle=True, seed=0, drop_empty=False, include_info=False, cache=False,
                   **augment_kwargs):
    """A COCO instances file and its image folder as a batched detection `tf.data.Dataset`.

    The file is read and checked in Python: every image must exist in `images_dir`, every
    annotation must name a known image and category and lie inside its image (within 1 pixel,
    then clipped). Crowd annotations (`iscrowd=1`) and degenerate boxes (no area after
    clipping) are left out of the targets. Category ids become contiguous classes by
    `coco_categories(annotations_json)`. Decoding (JPEG/PNG, grey converted to RGB), resizing
    and augmentation run in tf.data.

    Sizes: with `image_size` every image is resized to it (aspect not kept). With `min_size`
    (and `max_size`) images are resized as torchvision's `GeneralizedRCNNTransform` does: by
    `min(min_size / short side, max_size / long side)` (float32), to `floor(side * scale)`
    each, and a batch is zero-padded at the bottom/right to its largest image, rounded up to a
    multiple of `size_divisible`. Without either, images keep their size (padded the same way).
    Boxes are scaled with the image (`new / old` per axis).

    Args:
        annotations_json: path of the COCO instances JSON file.
        images_dir: folder holding the images' `file_name`s.
        batch_size: batch size.
        image_size: fixed output `(height, width)` or an int for a square.
        min_size: short-side size (torchvision rule), an int or a tuple: with `augment=True`
            one is drawn per image (multi-scale training), otherwise the last is used.
        max_size: long-side limit (torchvision rule), or None for no limit.
        size_divisible: padding multiple of a batch with `min_size` (torchvision: 32).
        augment: random horizontal flip, and with `image_size` also scale jitter with
            crop/pad back (`kcv.data.augment_detection`), and colour jitter.
        max_boxes: `M`, the padded number of boxes; an image with more raises an error.
        shuffle: shuffle the images every epoch (seeded).
        seed: seed of shuffling and augmentation.
        drop_empty: leave out images without (non-crowd, non-degenerate) boxes.
        include_info: also put `"image_id"` int64 `[B]`, `"original_size"` and `"image_size"`
            int32 `[B, 2]` (the resized, unpadded size) into the targets, as
            `detections_to_coco` needs them.
        cache: keep decoded, resized images in memory after the first epoch.
        **augment_kwargs: passed to `kcv.data.augment_detection` (with `image_size`).

    Returns:
        A `tf.data.Dataset` of `(images float32 [B, H, W, 3] in [0, 1], targets)`,
        `targets = {"boxes": float32 [B, M, 4], "classes": int32 [B, M]}` padded with class -1.

    Raises:
        ValueError: a bad argument (named), or a problem in the file naming the file and the
            image or annotation id (missing image file, unknown image or category, a box
            outside its image, more than `max_boxes` boxes).

    Example:
        >>> import kcv
        >>> _ = write_coco_json("shapes.json", "shapes", kcv.data.make_shapes_detection(4, 64),
        ...                     ["ellipse", "rectangle", "triangle"])
        >>> val = coco_detection("shapes.json", "shapes", batch_size=2, min_size=80,
        ...                      max_size=100, shuffle=False, include_info=True)
        >>> images, targets = next(iter(val))  # 64 x 64 -> 80 x 80, padded to 96 x 96
        >>> images.shape, targets["image_size"].numpy()[0]
        (TensorShape([2, 96, 96, 3]), array([80, 80], dtype=int32))
    """
    fixed, min_sizes = _check_size_arguments(image_size, min_size, max_size, size_divisible)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"`max_boxes` must be a positive int. Received: max_boxes={max_boxes!r}")
    if not isinstance(images_dir, (str, os.PathLike)) or not os.path.isdir(images_dir):
        raise ValueError(f"`images_dir` must be an existing directory. Received: "
                         f"images_dir={images_dir!r}")
    records, _ = _records(annotations_json, images_dir, max_boxes, drop_empty)
    if not records:
        raise ValueError(f"No images to load in {annotations_json} (drop_empty={drop_empty}).")
    counts = [len(r["classes"]) for _, r in records]
    ends = np.cumsum(counts)
    all_boxes = tf.constant(np.array([b for _, r in records for b in r["boxes"]],
                                     np.float32).reshape(-1, 4))
    all_classes = tf.constant(np.array([c for _, r in records for c in r["classes"]], np.int32))
    table = (
        [r["path"] for _, r in records],
        np.array([i for i, _ in records], np.int64),
        np.array([r["size"] for _, r in records], np.int32),
        (ends - counts).astype(np.int64),
        ends.astype(np.int64),
    )

    def load(path, image_id, size, start, end):
        image = _decode_image(tf.io.read_file(path))
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(image)[:2], size,
                message=tf.strings.join(["image size differs from the COCO file: ", path]))]):
            image = tf.image.convert_image_dtype(image, tf.float32)
        targets = pad_targets(all_boxes[start:end], all_classes[start:end], max_boxes)
        targets.update(image_id=image_id, original_size=size)
        return image, targets

    def resize(image, targets, new_size):
        image, targets = resize_detection(image, targets, new_size)
        targets["image_size"] = tf.cast(new_size, tf.int32)
        return image, targets

    def resize_fixed(image, targets):
        image, targets = resize(image, targets, fixed)
        return tf.ensure_shape(image, (*fixed, 3)), targets

    def resize_torchvision(image, targets, seed_pair=None):
        sizes = tf.constant(min_sizes, tf.float32)
        if seed_pair is None:
            chosen = sizes[-1]
        else:
            chosen = sizes[tf.random.stateless_uniform([], seed_pair, 0, len(min_sizes),
                                                       dtype=tf.int32)]
        return resize(image, targets, _torchvision_size(targets["original_size"], chosen,
                                                        max_size))

    ds = tf.data.Dataset.from_tensor_slices(table)
    if shuffle:
        ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if fixed is not None:
        ds = ds.map(resize_fixed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif min_sizes is not None and not augment:
        ds = ds.map(resize_torchvision, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda image, t: (image, {**t, "image_size": t["original_size"]}))
    if cache:
        ds = ds.cache()
    if augment:
        if fixed is not None:
            ds = augment_dataset(ds, seed, fixed, **augment_kwargs)
        else:
            if min_sizes is not None:  # a random short side per image, then flip and colour
                sizes = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
                ds = tf.data.Dataset.zip((ds, sizes.batch(2))).map(
                    lambda example, s: resize_torchvision(*example, s),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = augment_dataset(ds, seed, None, **augment_kwargs)
    if not include_info:
        ds = ds.map(lambda image, t: (image, {"boxes": t["boxes"], "classes": t["classes"]}))
    if fixed is not None:
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ds = ds.padded_batch(batch_size)
    ds = ds.map(lambda images, t: (_pad_to_multiple(images, size_divisible), t))
    return ds.prefetch(tf.data.AUTOTUNE)


def _pad_to_multiple(images, multiple):
    """Zero-pads `[B, H, W, C]` at the bottom/right to multiples of `multiple` (torchvision's
    `batch_images`)."""
    shape = tf.shape(images)
    padded = (shape[1:3] + multiple - 1) // multiple * multiple
    return tf.pad(images, [[0, 0], [0, padded[0] - shape[1]], [0, padded[1] - shape[2]], [0, 0]])


def detections_to_coco(predictions, info, categories):
    """Detections of a batch as COCO result dicts, in the original images' pixels and ids.

    Boxes are scaled from the resized image back to the original one by
    `original_size / image_size` per axis (torchvision's `postprocess`), converted to
    `[x, y, width, height]`, and classes mapped to category ids.

    Args:
        predictions: dict of `"boxes"` `[B, D, 4]` (`[y1, x1, y2, x2]` pixels of the model's
            input), `"scores"` `[B, D]`, `"classes"` `[B, D]` (contiguous) and
            `"num_detections"` `[B]` (NumPy arrays or Tensors), as a kcv detector returns them.
        info: the targets of `coco_detection(..., include_info=True)` for the batch (uses
            `"image_id"`, `"original_size"`, `"image_size"`).
        categories: the `CocoCategories` of the file (`coco_categories(annotations_json)`).

    Returns:
        A list of `{"image_id", "category_id", "bbox", "score"}` dicts (the COCO results
        format), to `json.dump` or pass to `kcv.metrics.coco_evaluate`.
    """
    for key in ("boxes", "scores", "classes", "num_detections"):
        if key not in predictions:
            raise ValueError(f"`predictions` needs the key {key!r}. Received keys: "
                             f"{sorted(predictions)}")
    for key in ("image_id", "original_size", "image_size"):
        if key not in info:
            raise ValueError(f"`info` needs the key {key!r} (load with include_info=True). "
                             f"Received keys: {sorted(info)}")
    boxes, scores, classes, counts = (np.asarray(predictions[k]) for k in
                                      ("boxes", "scores", "classes", "num_detections"))
    image_ids = np.asarray(info["image_id"])
    ratio = np.asarray(info["original_size"], np.float64) / np.asarray(info["image_size"])
    results = []
    for b in range(len(image_ids)):
        n = int(counts[b])
        scaled = boxes[b, :n].astype(np.float64) * np.tile(ratio[b], 2)
        category_ids = categories.to_category_ids(classes[b, :n].astype(np.int64))
        for (y1, x1, y2, x2), score, cid in zip(scaled, scores[b, :n], category_ids):
            results.append({"image_id": int(image_ids[b]), "category_id": int(cid),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            "score": float(score)})
    return results


def _examples(data):
    """`(image [H, W, 3], boxes [M, 4], classes [M])` NumPy triples from arrays or a dataset."""
    if isinstance(data, tf.data.Dataset):
        for images, targets in data.as_numpy_iterator():
            if images.ndim == 3:
                yield images, targets["boxes"], targets["classes"]
            else:
                yield from zip(images, targets["boxes"], targets["classes"])
        return
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], dict)):
        raise ValueError("`data` must be `(images, targets)` arrays (as make_shapes_detection "
                         f"returns) or a tf.data.Dataset of them. Received: {type(data).__name__}")
    images, targets = data
    yield from zip(np.asarray(images), np.asarray(targets["boxes"]),
                   np.asarray(targets["classes"]))


def write_coco_json(annotations_json, images_dir, data, class_names, category_ids=None):
    """Writes detection data as PNG files plus a COCO instances JSON file.

    Lets any data (e.g. `make_shapes_detection`) go through the same path as real data
    (`coco_detection`, `coco_evaluate`). Images are named `000001.png`, ... with ids 1, 2, ...;
    annotation ids count from 1; `area` is the box area, `iscrowd` 0.

    Args:
        annotations_json: path of the JSON file to write.
        images_dir: folder for the PNG files (created if needed).
        data: `(images, targets)` arrays (`images` `[N, H, W, 3]` float in [0, 1] or uint8,
            targets `{"boxes" [N, M, 4], "classes" [N, M]}` padded with class -1), or a
            `tf.data.Dataset` yielding them (batched or not).
        class_names: the name of each contiguous class.
        category_ids: the category id of each class (default `1..C`, as COCO counts).

    Returns:
        The `CocoCategories` written.

    Example:
        >>> import kcv
        >>> data = kcv.data.make_shapes_detection(4, 64)
        >>> write_coco_json("shapes.json", "shapes", data, ["ellipse", "rectangle", "triangle"])
        CocoCategories(category_ids=(1, 2, 3), names=('ellipse', 'rectangle', 'triangle'))
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError(f"`class_names` must name at least one class. Received: {class_names!r}")
    category_ids = list(range(1, len(class_names) + 1)) if category_ids is None else [
        int(c) for c in category_ids]
    if len(category_ids) != len(class_names) or len(set(category_ids)) != len(category_ids):
        raise ValueError("`category_ids` must hold one distinct id per class. Received: "
                         f"category_ids={category_ids!r} for {len(class_names)} classes")
    os.makedirs(images_dir, exist_ok=True)
    categories = [{"id": cid, "name": str(name), "supercategory": "object"}
                  for cid, name in zip(category_ids, class_names)]
    images, annotations = [], []
    for index, (image, boxes, classes) in enumerate(_examples(data), start=1):
        if image.dtype != np.uint8:
            image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        file_name = f"{index:06d}.png"
        tf.io.write_file(os.path.join(images_dir, file_name), tf.io.encode_png(image))
        images.append({"id": index, "file_name": file_name, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        for (y1, x1, y2, x2), cls in zip(boxes.astype(np.float64), classes):
            if cls < 0:
                continue
            if cls >= len(class_names):
                raise ValueError(f"Image {index} has class {int(cls)}, but `class_names` names "
                                 f"{len(class_names)} classes.")
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": index,
                                "category_id": category_ids[int(cls)],
                                "bbox": [float(x1), float(y1), float(w), float(h)],
                                "area": float(w * h), "iscrowd": 0})
    with open(annotations_json, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return CocoCategories(categories)
