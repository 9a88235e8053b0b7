"""Confidence maps and part affinity fields against hand-computed pixels (a horizontal limb of
known width, two overlapping people, strides) and a per-pixel NumPy transcription of the
paper's equations; the loss weights and the argument errors."""

import numpy as np
import pytest
import tensorflow as tf

from kcv.data.keypoints import confidence_maps, keypoint_weights, part_affinity_fields


def test_confidence_map_single_keypoint_hand_computed():
    maps = confidence_maps([[[2.0, 1.0]]], [[1]], (3, 4), sigma=1.0).numpy()
    assert maps.shape == (3, 4, 1)
    # exp(-((x - 2)^2 + (y - 1)^2) / 1): rows y = 0, 1, 2, columns x = 0..3.
    d2 = np.array([[5, 2, 1, 2], [4, 1, 0, 1], [5, 2, 1, 2]], np.float64)
    np.testing.assert_allclose(maps[..., 0], np.exp(-d2), rtol=1e-6)


def test_confidence_map_two_overlapping_people_take_the_maximum_not_the_sum():
    keypoints = [[[1.0, 0.0]], [[3.0, 0.0]]]
    maps = confidence_maps(keypoints, [[1], [1]], (1, 5), sigma=2.0).numpy()[0, :, 0]
    # x = 0..4: person A at 1 gives exp(-(x-1)^2/4), B at 3 gives exp(-(x-3)^2/4).
    expected = [np.exp(-1 / 4), 1.0, np.exp(-1 / 4), 1.0, np.exp(-1 / 4)]
    np.testing.assert_allclose(maps, expected, rtol=1e-6)  # the sum would give 2e^-1/4 at x=2


def test_confidence_map_stride_and_invisible_keypoints():
    # Stride 4: output pixel (i, j) is input point (4j, 4i); the keypoint (8, 4) is pixel (1, 2).
    keypoints = [[[8.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    maps = confidence_maps(keypoints, [[2, 0], [0, 0]], (3, 3), sigma=4.0, stride=4).numpy()
    assert maps[1, 2, 0] == 1.0
    np.testing.assert_allclose(maps[0, 2, 0], np.exp(-16 / 16), rtol=1e-6)
    np.testing.assert_allclose(maps[1, 1, 0], np.exp(-16 / 16), rtol=1e-6)
    np.testing.assert_allclose(maps[0, 0, 0], np.exp(-(64 + 16) / 16), rtol=1e-6)
    assert not maps[..., 1].any()  # nobody's keypoint 1 is labelled


def test_no_people_give_zero_maps():
    empty = np.zeros((0, 3, 2), np.float32)
    assert confidence_maps(empty, np.zeros((0, 3)), (4, 5), 2.0).numpy().tolist() == (
        np.zeros((4, 5, 3)).tolist())
    fields = part_affinity_fields(empty, np.zeros((0, 3)), [(0, 1)], (4, 5), 1.0)
    assert fields.shape == (4, 5, 1, 2) and not fields.numpy().any()


def test_paf_horizontal_limb_of_known_width():
    # Limb from (1, 2) to (5, 2), half-width 1: pixels with 1 <= x <= 5 and 1 <= y <= 3 hold
    # the unit vector (1, 0), all others 0.
    fields = part_affinity_fields([[[1.0, 2.0], [5.0, 2.0]]], [[1, 1]], [(0, 1)], (5, 7),
                                  limb_width=1.0).numpy()[:, :, 0]
    on = np.zeros((5, 7), bool)
    on[1:4, 1:6] = True
    np.testing.assert_array_equal(fields[..., 0], on.astype(np.float32))
    np.testing.assert_array_equal(fields[..., 1], np.zeros((5, 7)))
    # Reversed limb (j1 = right end): the vector flips.
    back = part_affinity_fields([[[1.0, 2.0], [5.0, 2.0]]], [[1, 1]], [(1, 0)], (5, 7), 1.0)
    np.testing.assert_array_equal(back.numpy()[:, :, 0, 0], -on.astype(np.float32))


def test_paf_two_overlapping_people_are_averaged():
    # Person A: horizontal limb (1, 2) -> (5, 2); person B: vertical limb (3, 0) -> (3, 4);
    # half-width 0.5, so each covers one row / column. At (3, 2) both: ((1, 0) + (0, 1)) / 2.
    keypoints = [[[1.0, 2.0], [5.0, 2.0]], [[3.0, 0.0], [3.0, 4.0]]]
    fields = part_affinity_fields(keypoints, [[1, 1], [1, 1]], [(0, 1)], (5, 7), 0.5).numpy()
    fx, fy = fields[:, :, 0, 0], fields[:, :, 0, 1]
    ex, ey = np.zeros((5, 7)), np.zeros((5, 7))
    ex[2, 1:6] = 1.0
    ey[0:5, 3] = 1.0
    ex[2, 3] = ey[2, 3] = 0.5
    np.testing.assert_array_equal(fx, ex)
    np.testing.assert_array_equal(fy, ey)
    # The same limb twice (two people on top of each other) averages to the unit vector.
    twice = part_affinity_fields([keypoints[0], keypoints[0]], [[1, 1], [1, 1]], [(0, 1)],
                                 (5, 7), 0.5).numpy()
    row = np.zeros((5, 7))
    row[2, 1:6] = 1.0
    np.testing.assert_array_equal(twice[:, :, 0, 0], row)


def test_paf_stride_and_missing_ends():
    # Stride 2: output pixel (i, j) is input point (2j, 2i). Limb (0, 2) -> (6, 2), width 1:
    # input rows y in [1, 3] hold only y = 2 (i = 1), columns x = 0, 2, 4, 6 (j = 0..3).
    keypoints = [[[0.0, 2.0], [6.0, 2.0], [9.0, 9.0]]]
    fields = part_affinity_fields(keypoints, [[1, 1, 0]], [(0, 1), (1, 2)], (3, 5), 1.0,
                                  stride=2).numpy()
    expected = np.zeros((3, 5))
    expected[1, 0:4] = 1.0
    np.testing.assert_array_equal(fields[:, :, 0, 0], expected)
    assert not fields[:, :, 1].any()  # keypoint 2 not labelled: limb (1, 2) covers nothing


def _numpy_paf(keypoints, visibility, limbs, shape, width, stride):
    """Eqs. 8-9 of Cao et al. pixel by pixel."""
    out = np.zeros((*shape, len(limbs), 2))
    for c, (a, b) in enumerate(limbs):
        for i in range(shape[0]):
            for j in range(shape[1]):
                q = np.array([j * stride, i * stride], np.float64)
                total, n = np.zeros(2), 0
                for p in range(len(keypoints)):
                    if not (visibility[p, a] and visibility[p, b]):
                        continue
                    v = keypoints[p, b] - keypoints[p, a]
                    length = np.linalg.norm(v)
                    if length == 0:
                        continue
                    v = v / length
                    d = q - keypoints[p, a]
                    if 0 <= v @ d <= length and abs(v[0] * d[1] - v[1] * d[0]) <= width:
                        total += v
                        n += 1
                out[i, j, c] = total / n if n else 0.0
    return out


def _numpy_maps(keypoints, visibility, shape, sigma, stride):
    out = np.zeros((*shape, keypoints.shape[1]))
    for i in range(shape[0]):
        for j in range(shape[1]):
            q = np.array([j * stride, i * stride], np.float64)
            for k in range(keypoints.shape[1]):
                for p in range(len(keypoints)):
                    if visibility[p, k]:
                        g = np.exp(-np.sum((q - keypoints[p, k]) ** 2) / sigma**2)
                        out[i, j, k] = max(out[i, j, k], g)
    return out


def test_random_people_match_the_paper_per_pixel():
    rng = np.random.default_rng(3)
    keypoints = rng.uniform(0, 24, size=(3, 4, 2)).astype(np.float32)
    visibility = rng.integers(0, 3, size=(3, 4))
    limbs = [(0, 1), (1, 2), (2, 3), (3, 0)]
    fields = part_affinity_fields(keypoints, visibility, limbs, (7, 6), 2.5, stride=4)
    np.testing.assert_allclose(fields, _numpy_paf(keypoints.astype(np.float64), visibility,
                                                  limbs, (7, 6), 2.5, 4), atol=1e-6)
    maps = confidence_maps(keypoints, visibility, (7, 6), 3.0, stride=4)
    np.testing.assert_allclose(maps, _numpy_maps(keypoints.astype(np.float64), visibility,
                                                 (7, 6), 3.0, 4), atol=1e-6)


def test_runs_in_a_graph_with_an_unknown_number_of_people():
    @tf.function(input_signature=[tf.TensorSpec((None, 2, 2), tf.float32),
                                  tf.TensorSpec((None, 2), tf.int32)])
    def targets(keypoints, visibility):
        return (confidence_maps(keypoints, visibility, (4, 4), 1.0),
                part_affinity_fields(keypoints, visibility, [(0, 1)], (4, 4), 1.0))

    for n in (0, 2):
        maps, fields = targets(np.zeros((n, 2, 2), np.float32), np.ones((n, 2), np.int32))
        assert maps.shape == (4, 4, 2) and fields.shape == (4, 4, 1, 2)


def test_keypoint_weights_mask_missing_keypoints_and_unlabelled_people():
    boxes = [[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]]  # [y1, x1, y2, x2]
    visibility = [[1, 0], [0, 0]]  # person 0 lacks keypoint 1; person 1 is unlabelled
    heat, fields = (w.numpy() for w in keypoint_weights(boxes, visibility, [(0, 1)], (4, 4)))
    box0, box1 = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    box0[0:2, 0:2] = True
    box1[2:4, 2:4] = True
    np.testing.assert_array_equal(heat[..., 0], ~box1)
    np.testing.assert_array_equal(heat[..., 1], ~(box0 | box1))
    np.testing.assert_array_equal(fields[..., 0, 0], ~(box0 | box1))
    np.testing.assert_array_equal(fields[..., 0, 1], fields[..., 0, 0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: confidence_maps([[1.0, 2.0]], [[1]], (4, 4), 1.0), r"keypoints.shape=\(1, 2\)"),
        (lambda: confidence_maps([[[1.0, 2.0]]], [[1, 1]], (4, 4), 1.0), "visibility"),
        (lambda: confidence_maps([[[1.0, 2.0]]], [[1]], (4, 0), 1.0), r"output_shape=\(4, 0\)"),
        (lambda: confidence_maps([[[1.0, 2.0]]], [[1]], (4, 4), 0.0), "sigma=0.0"),
        (lambda: confidence_maps([[[1.0, 2.0]]], [[1]], (4, 4), 1.0, stride=-1), "stride=-1"),
        (lambda: part_affinity_fields([[[1.0, 2.0]]], [[1]], [(0, 1)], (4, 4), 1.0),
         r"limbs.*\[0, 1\).*limbs=\[\(0, 1\)\]"),
        (lambda: part_affinity_fields([[[1.0, 2.0]] * 2], [[1, 1]], [(0, 0)], (4, 4), 1.0),
         "distinct"),
        (lambda: part_affinity_fields([[[1.0, 2.0]] * 2], [[1, 1]], [(0, 1)], (4, 4), 0),
         "limb_width=0"),
        (lambda: keypoint_weights([[0.0, 1.0]], [[1]], [(0, 1)], (4, 4)), "boxes"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
