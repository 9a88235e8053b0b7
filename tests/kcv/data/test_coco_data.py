import json
import os

import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO

import kcv
from kcv.data import coco

CATEGORIES = [{"id": 12, "name": "cup"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]


def _write_image(path, height, width, value=0):
    image = np.full((height, width, 3), value, np.uint8)
    data = tf.io.encode_png(image) if path.endswith(".png") else tf.io.encode_jpeg(image)
    tf.io.write_file(path, data)


def _dataset(tmp_path, images, annotations, categories=CATEGORIES, write=True):
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    if write:
        for image in images:
            _write_image(str(images_dir / image["file_name"]), image["height"], image["width"],
                         value=image["id"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return str(path), str(images_dir)


IMAGES = [{"id": 5, "file_name": "a.png", "height": 30, "width": 40},
          {"id": 9, "file_name": "b.jpg", "height": 50, "width": 20}]
ANNOTATIONS = [
    {"id": 1, "image_id": 5, "category_id": 7, "bbox": [4, 2, 10, 6], "iscrowd": 0},
    {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd
    {"id": 3, "image_id": 5, "category_id": 12, "bbox": [20, 10, 0, 5], "iscrowd": 0},  # w = 0
    {"id": 4, "image_id": 9, "category_id": 12, "bbox": [1, 40, 19, 10], "iscrowd": 0},
    {"id": 5, "image_id": 9, "category_id": 3, "bbox": [5.5, 0, 2, 3], "iscrowd": 0},
]


def test_categories_map_both_ways():
    cats = coco.CocoCategories(CATEGORIES)
    assert cats.category_ids == (3, 7, 12) and cats.names == ("car", "dog", "cup")
    np.testing.assert_array_equal(cats.to_classes([12, 3, 7]), [2, 0, 1])
    np.testing.assert_array_equal(cats.to_category_ids([2, 0, 1]), [12, 3, 7])
    with pytest.raises(ValueError, match="Unknown category ids \\[4\\]"):
        cats.to_classes([4])
    with pytest.raises(ValueError, match="classes"):
        cats.to_category_ids([3])


def test_loads_boxes_classes_drops_crowd_and_degenerate(tmp_path):
    path, images_dir = _dataset(tmp_path, IMAGES, ANNOTATIONS)
    ds = kcv.data.coco_detection(path, images_dir, batch_size=1, shuffle=False, max_boxes=4,
                                 include_info=True)
    (im_a, t_a), (im_b, t_b) = list(ds)
    # no resizing: each batch padded to multiples of 32
    assert im_a.shape == (1, 32, 64, 3) and im_b.shape == (1, 64, 32, 3)
    np.testing.assert_allclose(im_a[0, :30, :40].numpy(), 5 / 255, atol=1e-6)
    assert (im_a[0, 30:].numpy() == 0).all() and (im_a[0, :, 40:].numpy() == 0).all()
    # [x, y, w, h] -> [y, x, y + h, x + w]; category 7 -> class 1, 12 -> 2, 3 -> 0
    np.testing.assert_array_equal(t_a["boxes"][0].numpy(), [[2, 4, 8, 14]] + [[0, 0, 0, 0]] * 3)
    np.testing.assert_array_equal(t_a["classes"][0].numpy(), [1, -1, -1, -1])
    np.testing.assert_array_equal(t_b["boxes"][0].numpy()[:2], [[40, 1, 50, 20], [0, 5.5, 3, 7.5]])
    np.testing.assert_array_equal(t_b["classes"][0].numpy(), [2, 0, -1, -1])
    assert t_a["image_id"].numpy().tolist() == [5] and t_b["image_id"].numpy().tolist() == [9]
    np.testing.assert_array_equal(t_b["original_size"][0].numpy(), [50, 20])


def test_fixed_image_size_scales_boxes(tmp_path):
    path, images_dir = _dataset(tmp_path, IMAGES, ANNOTATIONS)
    ds = kcv.data.coco_detection(path, images_dir, batch_size=2, image_size=(60, 20),
                                 shuffle=False, max_boxes=3)
    images, t = next(iter(ds))
    assert images.shape == (2, 60, 20, 3)
    # image a: rows x 2, columns x 1/2; image b: rows x 6/5, columns x 1
    np.testing.assert_allclose(t["boxes"][0, 0].numpy(), [4, 2, 16, 7])
    np.testing.assert_allclose(t["boxes"][1, :2].numpy(), [[48, 1, 60, 20], [0, 5.5, 3.6, 7.5]],
                               rtol=1e-6)
    assert set(t.keys()) == {"boxes", "classes"}


def test_torchvision_resize_rule(tmp_path):
    # GeneralizedRCNNTransform(min_size=800, max_size=1333): scale = min(800 / short,
    # 1333 / long) in float32, size = floor(side * scale).
    # 480 x 640: 800 / 480 = 1.6666666269302368 (float32): 480 -> 799.99998 -> 799,
    #            640 -> 1066.67 -> 1066.
    # 300 x 1000: 1333 / 1000 = 1.3329999446868896 (float32) < 800 / 300:
    #            300 -> 399.89998 -> 399, 1000 -> 1332.99994 -> 1332.
    # The batch is padded to (799, 1332) rounded up to 32: (800, 1344).
    images = [{"id": 1, "file_name": "p.png", "height": 480, "width": 640},
              {"id": 2, "file_name": "q.png", "height": 300, "width": 1000}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [64, 48, 320, 240]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [100, 30, 500, 150]}]
    path, images_dir = _dataset(tmp_path, images, anns)
    ds = kcv.data.coco_detection(path, images_dir, batch_size=2, min_size=800, max_size=1333,
                                 shuffle=False, max_boxes=1, include_info=True)
    batch, t = next(iter(ds))
    assert batch.shape == (2, 800, 1344, 3)
    np.testing.assert_array_equal(t["image_size"].numpy(), [[799, 1066], [399, 1332]])
    # image 1 fills [0, 799) x [0, 1066) only
    assert batch[0, 798, 1065, 0] > 0 and (batch[0, 799:].numpy() == 0).all()
    assert (batch[0, :, 1066:].numpy() == 0).all()
    # boxes scale by new / old per axis (torchvision's resize_boxes)
    np.testing.assert_allclose(t["boxes"][0, 0].numpy(),
                               [48 * 799 / 480, 64 * 1066 / 640, 288 * 799 / 480,
                                384 * 1066 / 640], rtol=1e-6)
    np.testing.assert_allclose(t["boxes"][1, 0].numpy(),
                               [30 * 399 / 300, 100 * 1332 / 1000, 180 * 399 / 300,
                                600 * 1332 / 1000], rtol=1e-6)


def test_augmented_multi_scale_keeps_boxes_on_the_objects(tmp_path):
    images = [{"id": 1, "file_name": "p.png", "height": 40, "width": 60}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10]}]
    path, images_dir = _dataset(tmp_path, images, anns)
    ds = kcv.data.coco_detection(path, images_dir, batch_size=1, min_size=(20, 80), max_size=200,
                                 augment=True, max_boxes=1, color_jitter_strength=0.0)
    seen = set()
    for batch, t in ds.repeat(6):  # new draws each epoch
        box = t["boxes"][0, 0].numpy()
        scale = box[2] - box[0]  # height 10 at scale 1: scales 0.5 or 2
        assert scale in (5.0, 20.0)
        width = batch.shape[2]
        x1 = box[1] / (scale / 10)
        assert x1 in (10.0, 60 - 30.0)  # flipped or not
        seen.add((float(scale), float(x1)))
        assert width % 32 == 0
    assert len(seen) > 1


def test_write_coco_json_round_trip(tmp_path):
    images, targets = kcv.data.make_shapes_detection(3, 64, seed=0, max_boxes=8)
    cats = kcv.data.write_coco_json(str(tmp_path / "shapes.json"), str(tmp_path / "shapes"),
                                    (images, targets), ["ellipse", "rectangle", "triangle"],
                                    category_ids=[10, 20, 30])
    assert cats.category_ids == (10, 20, 30)
    gt = COCO(str(tmp_path / "shapes.json"))  # pycocotools reads it
    first = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    y1, x1, y2, x2 = targets["boxes"][0, 0]
    assert first["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert first["category_id"] == [10, 20, 30][targets["classes"][0, 0]]
    assert first["area"] == (x2 - x1) * (y2 - y1)
    ds = kcv.data.coco_detection(str(tmp_path / "shapes.json"), str(tmp_path / "shapes"),
                                 batch_size=3, image_size=64, shuffle=False, max_boxes=8)
    loaded, t = next(iter(ds))
    np.testing.assert_allclose(loaded.numpy(), images, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(t["boxes"].numpy(), targets["boxes"])
    np.testing.assert_array_equal(t["classes"].numpy(), targets["classes"])
    # also from a (batched) dataset
    ds = kcv.data.shapes_detection_dataset(3, 64, batch_size=2, seed=0, shuffle=False,
                                           max_boxes=8)
    kcv.data.write_coco_json(str(tmp_path / "b.json"), str(tmp_path / "b"), ds,
                             ["ellipse", "rectangle", "triangle"])
    again = json.loads((tmp_path / "b.json").read_text())
    assert len(again["images"]) == 3
    assert len(again["annotations"]) == int((targets["classes"] >= 0).sum())


def test_detections_to_coco_maps_back_to_original_pixels_and_ids():
    cats = coco.CocoCategories(CATEGORIES)
    predictions = {"boxes": np.array([[[20.0, 10.0, 60.0, 50.0], [0, 0, 0, 0]]]),
                   "scores": np.array([[0.9, 0.0]]), "classes": np.array([[2, 0]]),
                   "num_detections": np.array([1])}
    info = {"image_id": np.array([42]), "original_size": np.array([[50, 100]]),
            "image_size": np.array([[100, 50]])}
    results = kcv.data.detections_to_coco(predictions, info, cats)
    # rows x 1/2, columns x 2: [y1, x1, y2, x2] = [10, 20, 30, 100] -> [x, y, w, h]
    assert results == [{"image_id": 42, "category_id": 12, "bbox": [20.0, 10.0, 80.0, 20.0],
                        "score": 0.9}]
    with pytest.raises(ValueError, match="include_info"):
        kcv.data.detections_to_coco(predictions, {"image_id": [1]}, cats)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda i, a: a.append({"id": 77, "image_id": 3, "category_id": 3, "bbox": [0, 0, 1, 1]}),
         "Annotation id 77 in .*instances.json refers to image_id 3"),
        (lambda i, a: a.append({"id": 78, "image_id": 5, "category_id": 4, "bbox": [0, 0, 1, 1]}),
         "Annotation id 78 in .*instances.json has the unknown category_id 4"),
        (lambda i, a: a.append({"id": 79, "image_id": 5, "category_id": 3,
                                "bbox": [35, 0, 10, 5]}),
         "Annotation id 79 in .*instances.json: the box .* outside its image .*a.png"),
        (lambda i, a: a.append({"id": 80, "image_id": 5, "category_id": 3, "bbox": [1, 2]}),
         "Annotation id 80 .* bbox"),
        (lambda i, a: i.append({"id": 11, "file_name": "missing.png", "height": 4, "width": 4}),
         "Image id 11 of .*instances.json: no such file .*missing.png"),
    ],
)
def test_errors_name_the_file_and_id(tmp_path, change, match):
    images, anns = [dict(i) for i in IMAGES], [dict(a) for a in ANNOTATIONS]
    path, images_dir = _dataset(tmp_path, images, anns)
    change(images, anns)
    _dataset(tmp_path, images, anns, write=False)
    with pytest.raises(ValueError, match=match):
        kcv.data.coco_detection(path, images_dir, batch_size=1)


def test_fixed_size_augmentation_keeps_the_format(tmp_path):
    path, images_dir = _dataset(tmp_path, IMAGES, ANNOTATIONS)

    def run():
        ds = kcv.data.coco_detection(path, images_dir, batch_size=2, image_size=32, augment=True,
                                     max_boxes=3, scale_range=(0.5, 1.5))
        return [(x.numpy(), t["boxes"].numpy(), t["classes"].numpy()) for x, t in ds]
    first, second = run(), run()
    for (xa, ba, ca), (xb, bb, cb) in zip(first, second):  # seeded
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(ca, cb)
        assert xa.shape == (2, 32, 32, 3)
        valid = ca >= 0
        assert (ba[~valid] == 0).all() and (ba[valid] >= 0).all() and (ba[valid] <= 32).all()


def test_image_of_another_size_than_the_file_says_fails_naming_it(tmp_path):
    images = [dict(IMAGES[0], height=60)]
    path, images_dir = _dataset(tmp_path, images, [], write=False)
    _write_image(os.path.join(images_dir, "a.png"), 30, 40)
    ds = kcv.data.coco_detection(path, images_dir, batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differs from the COCO file.*a.png"):
        list(ds)
    del images[0]["height"]
    _dataset(tmp_path, images, [], write=False)
    with pytest.raises(ValueError, match="has no \\['height'\\]"):
        kcv.data.coco_detection(path, images_dir, batch_size=1)


def test_too_many_boxes_and_bad_files(tmp_path):
    path, images_dir = _dataset(tmp_path, IMAGES, ANNOTATIONS)
    with pytest.raises(ValueError, match="b.jpg has 2 boxes, more than `max_boxes`=1"):
        kcv.data.coco_detection(path, images_dir, batch_size=1, max_boxes=1)
    with pytest.raises(ValueError, match="annotations_json"):
        kcv.data.coco_detection(str(tmp_path / "nope.json"), images_dir)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="bad.json has no \\['annotations', 'categories'\\]"):
        kcv.data.coco_detection(str(tmp_path / "bad.json"), images_dir)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 32, "min_size": 20}, "image_size"),
        ({"image_size": (0, 4)}, "image_size"),
        ({"max_size": 100}, "max_size"),
        ({"min_size": 200, "max_size": 100}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"size_divisible": 0}, "size_divisible"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_boxes": 0}, "max_boxes"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    path, images_dir = _dataset(tmp_path, IMAGES, ANNOTATIONS)
    with pytest.raises(ValueError, match=match):
        kcv.data.coco_detection(path, images_dir, **kwargs)
    with pytest.raises(ValueError, match="images_dir"):
        kcv.data.coco_detection(path, os.path.join(images_dir, "nope"))
