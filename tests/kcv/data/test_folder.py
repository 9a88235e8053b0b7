"""segmentation_folder on small folders the tests write: pairing, decoding, joint augmentation,
caching, determinism and the errors that name the bad file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kcv.data import segmentation_folder

SIZE = 16


def _write_png(path, array):
    tf.io.write_file(str(path), tf.io.encode_png(array))


def _write_jpeg(path, array):
    tf.io.write_file(str(path), tf.io.encode_jpeg(array, quality=100))


def _masks(n, rng):
    """Blocky masks with classes 0..3 (big blocks, so a 1.5x zoom keeps most labels aligned)."""
    blocks = rng.integers(0, 4, size=(n, 4, 4))
    return np.repeat(np.repeat(blocks, SIZE // 4, 1), SIZE // 4, 2).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Five pairs: images encode their mask (value 60 * class in every channel), so a joint
    transform keeps `round(image * 255 / 60) == mask`. One image is a JPEG."""
    rng = np.random.default_rng(0)
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    images_dir.mkdir()
    masks_dir.mkdir()
    masks = _masks(5, rng)
    images = np.repeat(masks[..., None] * 60, 3, axis=-1).astype(np.uint8)
    for i in range(5):
        name = f"case{i}"
        if i == 4:
            _write_jpeg(images_dir / f"{name}.jpg", images[i])
        else:
            _write_png(images_dir / f"{name}.png", images[i])
        _write_png(masks_dir / f"{name}.png", masks[i][..., None])
    return images_dir, masks_dir, images, masks


def _all(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_pairs_by_name_and_decodes_without_augmentation(folder):
    images_dir, masks_dir, images, masks = folder
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 2, augment=False, shuffle=False,
                             num_classes=4)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
    assert ds.element_spec[1].dtype == tf.int32
    x, y = _all(ds)
    np.testing.assert_array_equal(y, masks)
    np.testing.assert_allclose(x[:4], images[:4] / 255.0, atol=1e-6)
    # The JPEG as Pillow decodes it (an independent decoder with libjpeg's default DCT).
    from PIL import Image

    jpeg = np.asarray(Image.open(images_dir / "case4.jpg").convert("RGB"))
    np.testing.assert_allclose(x[4], jpeg / 255.0, atol=1e-6)


def test_resizes_image_bilinear_and_mask_nearest(folder):
    images_dir, masks_dir, _, masks = folder
    x, y = _all(segmentation_folder(images_dir, masks_dir, (8, 12), 5, augment=False,
                                    shuffle=False))
    assert x.shape == (5, 8, 12, 3) and y.shape == (5, 8, 12)
    expected = tf.image.resize(masks[..., None], (8, 12), method="nearest").numpy()[..., 0]
    np.testing.assert_array_equal(y, expected)
    assert set(np.unique(y)) <= set(np.unique(masks))


def _dihedral(mask):
    out = []
    for m in (mask, mask[::-1], mask[:, ::-1], mask[::-1, ::-1]):
        out += [np.rot90(m, k) for k in range(4)]
    return out


def test_augmentation_moves_image_and_mask_together(folder):
    images_dir, masks_dir, _, masks = folder
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 5, shuffle=False, seed=3,
                             scale_range=(1.0, 1.0), color_jitter=0.0)
    changed = 0
    for _ in range(3):
        x, y = _all(ds)
        np.testing.assert_array_equal(np.round(x[..., 0] * 255 / 60), y)
        for i in range(5):
            assert any(np.array_equal(y[i], d) for d in _dihedral(masks[i]))
            changed += not np.array_equal(y[i], masks[i])
    assert changed >= 5


def test_scale_crop_keeps_labels_and_alignment(folder):
    images_dir, masks_dir, _, masks = folder
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 5, shuffle=False, seed=1,
                             scale_range=(1.5, 1.5), color_jitter=0.0)
    x, y = _all(ds)
    assert set(np.unique(y)) <= {0, 1, 2, 3}  # nearest neighbour: no new values
    agreement = np.mean(np.round(x[..., 0] * 255 / 60) == y)
    assert agreement > 0.85  # only the bilinear image blurs at block edges
    assert not all(any(np.array_equal(y[i], d) for d in _dihedral(masks[i])) for i in range(5))


def test_color_jitter_touches_the_image_only(folder):
    images_dir, masks_dir, images, masks = folder
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 5, shuffle=False, seed=2,
                             scale_range=(1.0, 1.0), color_jitter=1.0)
    x, y = _all(ds)
    for i in range(5):
        assert any(np.array_equal(y[i], d) for d in _dihedral(masks[i]))
    assert np.abs(np.round(x[..., 0] * 255 / 60) - y).max() > 0
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_seeded_and_new_draws_each_epoch(folder):
    images_dir, masks_dir, _, _ = folder
    first = _all(segmentation_folder(images_dir, masks_dir, SIZE, 5, seed=7))
    again = segmentation_folder(images_dir, masks_dir, SIZE, 5, seed=7)
    epoch1, epoch2 = _all(again), _all(again)
    np.testing.assert_array_equal(first[0], epoch1[0])
    assert not np.array_equal(epoch1[0], epoch2[0])


def test_cached_after_first_epoch(folder):
    images_dir, masks_dir, _, masks = folder
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 5, augment=False, shuffle=False)
    _all(ds)
    for d in (images_dir, masks_dir):
        for name in os.listdir(d):
            os.remove(d / name)
    np.testing.assert_array_equal(_all(ds)[1], masks)


def test_missing_partners_are_named(folder):
    images_dir, masks_dir, images, _ = folder
    _write_png(images_dir / "lonely.png", images[0])
    os.remove(images_dir / "case2.png")
    with pytest.raises(ValueError, match=r"lonely\.png.*case2\.png"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2)


def test_unreadable_image_is_named(folder):
    images_dir, masks_dir, _, _ = folder
    (images_dir / "case1.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"Cannot decode the image file .*case1\.png"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2)


def test_unreadable_mask_is_named(folder):
    images_dir, masks_dir, _, _ = folder
    (masks_dir / "case3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"Cannot decode the mask file .*case3\.png"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2)


def test_mask_values_outside_num_classes_are_named(folder):
    images_dir, masks_dir, _, masks = folder
    bad = masks[0].copy()
    bad[0, 0] = 7
    bad[1, 1] = 255
    _write_png(masks_dir / "case0.png", bad[..., None])
    with pytest.raises(ValueError, match=r"case0\.png holds values \[7, 255\]"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2, num_classes=4)
    with pytest.raises(ValueError, match=r"case0\.png holds values \[7\]"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2, num_classes=4, ignore_index=255)
    # Without the eager check, the run-time assertion names the file during iteration.
    ds = segmentation_folder(images_dir, masks_dir, SIZE, 2, num_classes=4, validate=False,
                             shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"case0\.png"):
        _all(ds)


def test_mask_of_wrong_size_is_named(folder):
    images_dir, masks_dir, _, _ = folder
    _write_png(masks_dir / "case4.png", np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"case4\.png is \(8, 8\).*\(16, 16\)"):
        segmentation_folder(images_dir, masks_dir, SIZE, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": (8,)}, "image_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_classes": 0}, "num_classes"),
    ({"scale_range": (0.5, 1.0)}, "scale_range"),
    ({"color_jitter": -1}, "color_jitter"),
    ({"images_dir": "/no/such/dir"}, "images_dir"),
])
def test_bad_arguments(folder, kwargs, match):
    images_dir, masks_dir, _, _ = folder
    args = {"images_dir": images_dir, "masks_dir": masks_dir, "image_size": SIZE,
            "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        segmentation_folder(**args)
