import numpy as np
import pytest

import kcv
from kcv.data import detection


def test_same_seed_same_data_and_other_seed_other_data():
    a = detection.make_shapes_detection(4, 64, seed=3)
    b = detection.make_shapes_detection(4, 64, seed=3)
    c = detection.make_shapes_detection(4, 64, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["boxes"], b[1]["boxes"])
    np.testing.assert_array_equal(a[1]["classes"], b[1]["classes"])
    assert not np.array_equal(a[0], c[0])


def test_format_and_padding_convention():
    images, t = detection.make_shapes_detection(12, 64, seed=0, min_objects=1, max_objects=6,
                                                max_boxes=9)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert t["boxes"].shape == (12, 9, 4) and t["boxes"].dtype == np.float32
    assert t["classes"].shape == (12, 9) and t["classes"].dtype == np.int32
    for boxes, classes in zip(t["boxes"], t["classes"]):
        n = int((classes >= 0).sum())
        assert 1 <= n <= 6
        assert (classes[:n] >= 0).all() and (classes[:n] <= 2).all()  # valid ones first
        assert (classes[n:] == -1).all() and (boxes[n:] == 0).all()
        b = boxes[:n]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b <= 64).all()


def test_boxes_are_tight_around_the_visible_pixels_shown_in_the_image():
    images, t = detection.make_shapes_detection(6, 64, seed=1, noise=0.0, return_masks=True)
    masks = t["masks"]
    assert masks.shape == (6, 16, 64, 64)
    # objects never share a pixel
    assert masks.sum(1).max() == 1
    for image, boxes, classes, objs in zip(images, t["boxes"], t["classes"], masks):
        background = image[~objs.any(0)]
        for box, cls, m in zip(boxes, classes, objs):
            if cls < 0:
                assert not m.any()
                continue
            rows, cols = np.nonzero(m)
            # pixel (r, c) covers [r, r + 1] x [c, c + 1]
            np.testing.assert_array_equal(box, [rows.min(), cols.min(), rows.max() + 1,
                                                cols.max() + 1])
            # the object's pixels are another colour than the background
            assert np.abs(image[m].mean(0) - background.mean(0)).max() > 0.1


def test_small_objects_border_objects_and_occlusion_occur():
    _, t = detection.make_shapes_detection(40, 128, seed=2, return_masks=True)
    valid = t["classes"] >= 0
    boxes = t["boxes"][valid]
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert side.min() >= 3
    assert (side <= 12).mean() > 0.15  # many small objects
    assert side.max() > 50  # and large ones
    touching = (boxes[:, :2] == 0).any(1) | (boxes[:, 2:] == 128).any(1)
    assert touching.mean() > 0.1
    assert set(np.unique(t["classes"][valid])) == {0, 1, 2}
    # Occlusion: some object's box holds pixels of another object drawn over it.
    occluded = 0
    for boxes_n, cls_n, masks_n in zip(t["boxes"], t["classes"], t["masks"]):
        for k in np.nonzero(cls_n >= 0)[0]:
            y1, x1, y2, x2 = boxes_n[k].astype(int)
            others = np.delete(masks_n, k, axis=0)[:, y1:y2, x1:x2]
            occluded += bool(others.any())
    assert occluded > 10


def test_dataset_matches_arrays_and_batches():
    images, t = kcv.data.make_shapes_detection(10, 48, seed=7, max_boxes=8)
    ds = kcv.data.shapes_detection_dataset(10, 48, batch_size=4, seed=7, shuffle=False,
                                           max_boxes=8)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1]["boxes"] for b in batches]), t["boxes"])
    np.testing.assert_array_equal(np.concatenate([b[1]["classes"] for b in batches]),
                                  t["classes"])


def test_augmented_dataset_is_seeded_and_keeps_the_format():
    def run():
        ds = kcv.data.shapes_detection_dataset(8, 64, batch_size=4, seed=5, augment=True,
                                               max_boxes=8)
        return [(x.numpy(), y["boxes"].numpy(), y["classes"].numpy()) for x, y in ds]
    a, b = run(), run()
    for (xa, ba, ca), (xb, bb, cb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(ca, cb)
    for x, boxes, classes in a:
        assert x.shape == (4, 64, 64, 3)
        valid = classes >= 0
        assert (boxes[~valid] == 0).all()
        assert (boxes[valid] >= 0).all() and (boxes[valid] <= 64).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": -1}, "num_images"),
        ({"num_images": 2, "image_size": 16}, "image_size"),
        ({"num_images": 2, "min_objects": 3, "max_objects": 1}, "min_objects"),
        ({"num_images": 2, "max_objects": 20, "max_boxes": 16}, "max_boxes"),
        ({"num_images": 2, "min_visible": 0.0}, "min_visible"),
        ({"num_images": 2, "noise": 2.0}, "noise"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        detection.make_shapes_detection(**kwargs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        detection.shapes_detection_dataset(4, 64, batch_size=0)
