"""Person assembly: peaks by max-pool NMS on hand-made maps, PAF line-integral scores of a
perfect and a reversed field, and the skeletons of synthetic people recovered exactly from
perfect maps (crossing limbs, a missing keypoint, stride 1 and 4, sub-pixel positions)."""

import numpy as np
import pytest
import tensorflow as tf

from kcv.data.keypoints import confidence_maps, part_affinity_fields
from kcv.models.pose.assembly import assemble_people, find_peaks, limb_scores

LIMBS = [(0, 1), (0, 2), (1, 3), (2, 4)]  # a tree rooted at keypoint 0


def test_peaks_by_max_pool_equality():
    heat = np.zeros((1, 6, 7, 2), np.float32)
    heat[0, 1, 1, 0], heat[0, 1, 2, 0] = 0.9, 0.5  # 0.5 is not a local maximum
    heat[0, 4, 5, 0] = 0.6
    heat[0, 3, 3, 0] = 0.05  # below the threshold
    peaks = find_peaks(heat, threshold=0.1, max_peaks=3, stride=2, refine=False)
    np.testing.assert_array_equal(peaks["xy"][0, 0], [[2, 2], [10, 8], [0, 0]])
    np.testing.assert_allclose(peaks["scores"][0, 0], [0.9, 0.6, 0.0])
    np.testing.assert_array_equal(peaks["valid"][0], [[True, True, False], [False] * 3])


def test_a_plateau_gives_one_peak():
    heat = np.zeros((1, 4, 5, 1), np.float32)
    heat[0, 1:3, 2:4, 0] = 0.7  # a 2x2 plateau of equal maxima: the first in raster order
    peaks = find_peaks(heat, max_peaks=2, refine=False)
    np.testing.assert_array_equal(peaks["xy"][0, 0, 0], [2, 1])
    np.testing.assert_array_equal(peaks["valid"][0, 0], [True, False])


def test_batched_steps_compile_with_xla():
    people, visibility = _people()
    heat = confidence_maps(people, visibility, (72, 80), 2.0)[None]
    pafs = tf.reshape(part_affinity_fields(people, visibility, LIMBS, (72, 80), 1.5)[None],
                      (1, 72, 80, 8))

    def steps(heat, pafs):
        peaks = find_peaks(heat, max_peaks=4)
        return peaks["xy"], limb_scores(pafs, peaks, LIMBS)

    eager = steps(heat, pafs)
    compiled = tf.function(steps, jit_compile=True)(heat, pafs)
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c, e, atol=1e-5)


def test_peak_refinement_is_exact_for_a_gaussian():
    # A Gaussian at the sub-pixel point (3.3, 2.6): the parabola through the log values of
    # the peak pixel (3, 3) and its neighbours has its vertex at the true point.
    maps = confidence_maps([[[3.3, 2.6]]], [[1]], (6, 7), sigma=1.5)[None]
    peaks = find_peaks(maps, max_peaks=1)
    np.testing.assert_allclose(peaks["xy"][0, 0, 0], [3.3, 2.6], atol=1e-4)


def test_limb_scores_of_a_perfect_and_a_reversed_field():
    person = [[[2.0, 3.0], [10.0, 3.0]]]
    heat = confidence_maps(person, [[1, 1]], (16, 16), 1.5)[None]
    paf = tf.reshape(part_affinity_fields(person, [[1, 1]], [(0, 1)], (16, 16), 1.0),
                     (1, 16, 16, 2))
    peaks = find_peaks(heat, max_peaks=2)
    scores = limb_scores(paf, peaks, [(0, 1)]).numpy()[0, 0]
    # The unit field along the limb gives 1; the prior min(0.5 * 16 / 8 - 1, 0) is 0.
    assert scores[0, 0] == pytest.approx(1.0)
    # With an image of height 8 the limb is as long as the image: 1 + (0.5 * 8 / 8 - 1).
    short = limb_scores(paf, peaks, [(0, 1)], image_height=8).numpy()[0, 0]
    assert short[0, 0] == pytest.approx(0.5)
    assert np.isneginf(scores[1:]).all() and np.isneginf(scores[:, 1:]).all()  # padding
    reverse = limb_scores(-paf, peaks, [(0, 1)]).numpy()[0, 0]
    assert np.isneginf(reverse[0, 0])


def _people():
    # Three people of 5 keypoints; the first two cross (limb 1->3 of person 0 crosses limb
    # 0->2 of person 1), person 2 lacks keypoint 4.
    people = np.array([
        [[20.5, 10.0], [12.0, 20.0], [28.0, 21.0], [30.25, 33.0], [27.0, 38.0]],
        [[40.0, 14.0], [46.0, 26.0], [21.0, 28.0], [50.0, 40.0], [14.0, 40.7]],
        [[60.0, 44.0], [52.0, 52.0], [70.0, 50.0], [48.0, 60.0], [0.0, 0.0]],
    ], np.float32)
    visibility = np.ones((3, 5), np.int32)
    visibility[2, 4] = 0
    return people, visibility


def _as_set(keypoints):
    return sorted(tuple(np.round(p, 2).ravel().tolist()) for p in keypoints)


@pytest.mark.parametrize("stride", [1, 4])
def test_recovers_synthetic_people_from_perfect_maps(stride):
    # At stride 4 the people, the spread and the limb width are 4 times larger in input
    # pixels, so the maps have the same 72 x 80 pixels: the crossing limbs stay separable.
    people, visibility = _people()
    people, sigma, width, shape = people * stride, 2.0 * stride, 1.5 * stride, (72, 80)
    heat = confidence_maps(people, visibility, shape, sigma, stride=stride)
    pafs = part_affinity_fields(people, visibility, LIMBS, shape, width, stride=stride)
    # A second image with only person 2 shows that the batch is handled per image.
    heat2 = confidence_maps(people[2:], visibility[2:], shape, sigma, stride=stride)
    pafs2 = part_affinity_fields(people[2:], visibility[2:], LIMBS, shape, width, stride=stride)
    results = assemble_people(tf.stack([heat, heat2]),
                              tf.reshape(tf.stack([pafs, pafs2]), (2, *shape, 2 * len(LIMBS))),
                              LIMBS, stride=stride)
    for (keypoints, scores), truth, vis in ((results[0], people, visibility),
                                            (results[1], people[2:], visibility[2:])):
        assert len(keypoints) == len(truth) and np.all(scores > 0)
        expected = np.concatenate([np.where(vis[..., None] > 0, truth, 0.0), vis[..., None] > 0],
                                  -1)
        found = np.concatenate([keypoints[..., :2], keypoints[..., 2:] > 0], -1)
        assert _as_set(found) == _as_set(expected)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: find_peaks(np.zeros((4, 4, 2))), r"heatmaps.shape=\(4, 4, 2\)"),
        (lambda: find_peaks(np.zeros((1, 4, 4, 2)), max_peaks=0), "max_peaks=0"),
        (lambda: assemble_people(np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4, 2)), [(0, 2)]),
         "limbs"),
        (lambda: assemble_people(np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4, 3)), [(0, 1)]),
         r"2 channels per limb.*pafs.shape=\(1, 4, 4, 3\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
