import numpy as np
import pytest

from kcv.data import synthetic


def test_same_seed_same_data_and_other_seed_other_data():
    a = synthetic.make_shapes(6, 32, seed=3)
    b = synthetic.make_shapes(6, 32, seed=3)
    c = synthetic.make_shapes(6, 32, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_shapes_dtypes_and_ranges():
    images, masks = synthetic.make_shapes(20, 48, seed=0)
    assert images.shape == (20, 48, 48, 3) and images.dtype == np.float32
    assert masks.shape == (20, 48, 48) and masks.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0, 1, 2, 3}
    # Over 20 images each of the three shape classes appears.
    assert {1, 2, 3} <= set(np.unique(masks))


def test_every_image_has_between_min_and_max_shapes_worth_of_pixels():
    _, masks = synthetic.make_shapes(10, 64, seed=1, min_shapes=1, max_shapes=1)
    for m in masks:
        fg = m > 0
        # one shape of radius 0.1..0.22 of the image: between ~1% and ~25% of the pixels
        assert 0.005 < fg.mean() < 0.3
        assert len(np.unique(m[fg])) == 1
    _, empty = synthetic.make_shapes(3, 32, seed=1, min_shapes=0, max_shapes=0)
    assert not empty.any()


def test_shapes_are_visible_in_the_image():
    # Noise-free images: a shape's pixels differ in colour from the background around it.
    images, masks = synthetic.make_shapes(10, 64, seed=2, min_shapes=1, max_shapes=1, noise=0.0)
    for img, m in zip(images, masks):
        inside = img[m > 0].mean(axis=0)
        outside = img[m == 0].mean(axis=0)
        assert np.abs(inside - outside).max() > 0.1


def test_shape_geometry_matches_the_class():
    # Fill ratio of the shape in its (rotated) minimal box: rectangles fill it, ellipses ~pi/4,
    # triangles ~1/2. Measured here with principal axes, independent of the generator.
    _, masks = synthetic.make_shapes(60, 96, seed=5, min_shapes=1, max_shapes=1, noise=0.0)
    ratios = {1: [], 2: [], 3: []}
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys) < 50 or ys.min() == 0 or xs.min() == 0 or ys.max() == 95 or xs.max() == 95:
            continue  # clipped by the border
        pts = np.stack([ys, xs], 1).astype(float)
        pts -= pts.mean(0)
        best = 0
        for angle in np.linspace(0, np.pi / 2, 46):
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            p = pts @ rot
            area_box = (np.ptp(p[:, 0]) + 1) * (np.ptp(p[:, 1]) + 1)  # pixel-inclusive box
            best = max(best, len(pts) / area_box)
        ratios[int(m[ys[0], xs[0]])].append(best)
    assert np.median(ratios[2]) > 0.88  # rectangle
    assert 0.70 < np.median(ratios[1]) < 0.84  # ellipse: pi/4 = 0.785
    assert np.median(ratios[3]) < 0.66  # triangle: 1/2 in its best box (more with pixels)


def test_dataset_matches_arrays_and_batches():
    images, masks = synthetic.make_shapes(10, 32, seed=7)
    ds = synthetic.shapes_dataset(10, 32, batch_size=4, seed=7, shuffle=False)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), masks)
    onehot = next(iter(synthetic.shapes_dataset(4, 32, batch_size=4, seed=7, shuffle=False,
                                                one_hot=True)))[1]
    np.testing.assert_array_equal(np.argmax(onehot, -1), masks[:4])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": -1}, "num_images"),
        ({"num_images": 2, "image_size": 8}, "image_size"),
        ({"num_images": 2, "min_shapes": 3, "max_shapes": 1}, "min_shapes"),
        ({"num_images": 2, "noise": 2.0}, "noise"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.make_shapes(**kwargs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        synthetic.shapes_dataset(4, 32, batch_size=0)
