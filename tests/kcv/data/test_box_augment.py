import numpy as np
import pytest
import tensorflow as tf

from kcv.data import box_augment as ba


def _targets(boxes, classes):
    return {"boxes": tf.constant(boxes, tf.float32), "classes": tf.constant(classes, tf.int32)}


def _ramp(h, w):
    """An image whose pixels tell where they come from (row, column, constant)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([yy / h, xx / w, np.full_like(yy, 0.5)], -1)


def test_flip_horizontal_by_hand():
    image = _ramp(10, 100)
    t = _targets([[1, 20, 5, 50], [0, 0, 10, 100], [0, 0, 0, 0]], [0, 2, -1])
    out_image, out = ba.flip_horizontal(tf.constant(image), t)
    np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1])
    # x' = W - x: [20, 50] -> [50, 80]; the whole image stays the whole image; padding stays 0
    np.testing.assert_array_equal(out["boxes"].numpy(),
                                  [[1, 50, 5, 80], [0, 0, 10, 100], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["classes"].numpy(), [0, 2, -1])


def test_resize_scales_boxes_by_the_size_ratio():
    t = _targets([[2, 4, 10, 20], [0, 0, 0, 0]], [1, -1])
    image, out = ba.resize_detection(tf.ones((20, 40, 3)), t, (10, 10))
    assert image.shape == (10, 10, 3)
    np.testing.assert_allclose(image.numpy(), 1.0)
    # rows x 10/20, columns x 10/40
    np.testing.assert_allclose(out["boxes"].numpy(), [[1, 1, 5, 5], [0, 0, 0, 0]])


def test_crop_clips_drops_below_visibility_and_compacts():
    image = _ramp(100, 100)
    t = _targets([[10, 10, 50, 50],     # 600 of 1600 px in the window: 0.375
                  [80, 80, 90, 90],     # outside the window
                  [25, 35, 35, 45],     # inside: shifted only
                  [0, 0, 0, 0]], [0, 1, 2, -1])
    cropped, out = ba.crop_detection(tf.constant(image), t, (20, 30), (40, 40),
                                     min_visibility=0.3)
    np.testing.assert_array_equal(cropped.numpy(), image[20:60, 30:70])
    np.testing.assert_array_equal(out["boxes"].numpy(),
                                  [[0, 0, 30, 20], [5, 5, 15, 15], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["classes"].numpy(), [0, 2, -1, -1])
    _, strict = ba.crop_detection(tf.constant(image), t, (20, 30), (40, 40), min_visibility=0.5)
    np.testing.assert_array_equal(strict["boxes"].numpy()[0], [5, 5, 15, 15])
    np.testing.assert_array_equal(strict["classes"].numpy(), [2, -1, -1, -1])


def test_crop_beyond_the_image_pads_with_zeros():
    image = _ramp(10, 10)
    t = _targets([[6, 6, 10, 10]], [0])
    cropped, out = ba.crop_detection(tf.constant(image), t, (5, 5), (8, 8))
    expected = np.zeros((8, 8, 3), np.float32)
    expected[:5, :5] = image[5:, 5:]
    np.testing.assert_array_equal(cropped.numpy(), expected)
    np.testing.assert_array_equal(out["boxes"].numpy(), [[1, 1, 5, 5]])


def test_scale_down_pads_bottom_right():
    image = np.full((40, 40, 3), 0.5, np.float32)
    t = _targets([[4, 8, 20, 40], [0, 0, 0, 0]], [1, -1])
    out_image, out = ba.random_scale_crop(tf.constant(image), t, tf.constant([1, 2]), (40, 40),
                                          scale_range=(0.5, 0.5))
    out_image = out_image.numpy()
    np.testing.assert_allclose(out_image[:20, :20], 0.5)
    assert (out_image[20:] == 0).all() and (out_image[:, 20:] == 0).all()
    np.testing.assert_allclose(out["boxes"].numpy(), [[2, 4, 10, 20], [0, 0, 0, 0]])


def test_scale_up_crops_at_an_offset_found_in_the_pixels():
    image = _ramp(20, 20)
    t = _targets([[2, 2, 6, 8], [12, 12, 18, 16], [0, 0, 0, 0]], [0, 1, -1])
    out_image, out = ba.random_scale_crop(tf.constant(image), t, tf.constant([3, 4]), (20, 20),
                                          scale_range=(2.0, 2.0), min_visibility=0.0)
    big = tf.image.resize(image, (40, 40), method="bilinear").numpy()
    matches = [(oy, ox) for oy in range(21) for ox in range(21)
               if np.allclose(big[oy:oy + 20, ox:ox + 20], out_image.numpy(), atol=1e-6)]
    assert len(matches) == 1
    oy, ox = matches[0]
    expected = np.array([[4, 4, 12, 16], [24, 24, 36, 32]], np.float32) - [oy, ox, oy, ox]
    expected = np.clip(expected, 0, 20)
    visible = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    n = int(visible.sum())
    np.testing.assert_allclose(out["boxes"].numpy()[:n], expected[visible])
    np.testing.assert_array_equal(out["classes"].numpy()[:n], np.array([0, 1])[visible])
    assert (out["classes"].numpy()[n:] == -1).all()


def test_color_jitter_changes_the_image_only():
    image = tf.constant(_ramp(16, 16))
    t = _targets([[1, 2, 5, 9], [0, 0, 0, 0]], [2, -1])
    out_image, out = ba.augment_detection(image, t, tf.constant([7, 8]), (16, 16),
                                          flip_probability=0.0, scale_range=(1.0, 1.0),
                                          color_jitter_strength=1.0)
    np.testing.assert_array_equal(out["boxes"].numpy(), t["boxes"].numpy())
    np.testing.assert_array_equal(out["classes"].numpy(), t["classes"].numpy())
    assert not np.allclose(out_image.numpy(), image.numpy())
    assert out_image.numpy().min() >= 0 and out_image.numpy().max() <= 1
    same, _ = ba.augment_detection(image, t, tf.constant([7, 8]), (16, 16), flip_probability=0.0,
                                   scale_range=(1.0, 1.0), color_jitter_strength=0.0)
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-6)


def test_augment_with_certain_flip_is_the_flip():
    image = tf.constant(_ramp(16, 32))
    t = _targets([[1, 2, 5, 9]], [0])
    out_image, out = ba.augment_detection(image, t, tf.constant([1, 1]), (16, 32),
                                          flip_probability=1.0, scale_range=(1.0, 1.0),
                                          color_jitter_strength=0.0)
    np.testing.assert_allclose(out_image.numpy(), image.numpy()[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(out["boxes"].numpy(), [[1, 23, 5, 30]])


def test_pad_targets():
    t = ba.pad_targets([[1.0, 2.0, 3.0, 4.0]], [0], 3)
    np.testing.assert_array_equal(t["boxes"].numpy(), [[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(t["classes"].numpy(), [0, -1, -1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_boxes=1"):
        ba.pad_targets([[1.0, 2.0, 3.0, 4.0]] * 2, [0, 1], 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda i, t: ba.crop_detection(i, t, (0, 0), (4, 4), min_visibility=1.5),
         "min_visibility"),
        (lambda i, t: ba.random_scale_crop(i, t, tf.constant([0, 0]), (8, 8),
                                           scale_range=(2.0, 1.0)), "scale_range"),
        (lambda i, t: ba.augment_detection(i, t, tf.constant([0, 0]), (8, 8),
                                           flip_probability=2.0), "flip_probability"),
        (lambda i, t: ba.augment_detection(i, t, tf.constant([0, 0]), (8, 8),
                                           color_jitter_strength=-1.0), "color_jitter_strength"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(tf.zeros((8, 8, 3)), _targets([[0, 0, 1, 1]], [0]))
