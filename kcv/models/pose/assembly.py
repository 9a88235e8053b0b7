"""Bottom-up person assembly from confidence maps and part affinity fields (OpenPose).

Three steps, the first two batched TensorFlow (graph- and XLA-friendly, no loop over images,
keypoints or candidates), the last plain NumPy:

1. `find_peaks`: keypoint candidates are the local maxima of each confidence map (non-maximum
   suppression by max-pool equality) above a threshold, refined to sub-pixel positions by a
   parabola through the log-confidence of the neighbours (exact for a Gaussian peak).
2. `limb_scores`: for every limb and every pair of candidates, the line integral of the part
   affinity field along the segment between them, approximated by `num_samples` uniform
   samples (Cao et al., eq. 10), with the authors' distance prior and the rule that most
   samples must agree with the limb's direction.
3. `assemble_people`: per limb, greedy bipartite matching of candidates by descending score
   (Cao et al., section 2.4: each candidate joins at most one limb of a kind), then the
   matched limbs are grouped into people by their shared keypoints.

Coordinates follow `kcv.data.keypoints`: map pixel (i, j) at `stride` s is the input point
(x, y) = (j * s, i * s). The assembly runs outside the Keras model (on its outputs), so that
the model converts to TFLite builtins and the grouping, whose output size varies, stays in
Python.

Reference:
    Cao, Simon, Wei & Sheikh, "Realtime Multi-Person 2D Pose Estimation using Part Affinity
    Fields", CVPR 2017, section 2.4.
"""

import numpy as np
import tensorflow as tf

from kcv.data.keypoints import check_limbs

__all__ = ["assemble_people", "find_peaks", "limb_scores"]

_TINY = 1e-6


def _check_maps(maps, name, rank=4):
    maps = tf.convert_to_tensor(maps)
    if maps.shape.rank != rank:
        raise ValueError(f"`{name}` must be [B, H, W, C]. Received: {name}.shape={maps.shape}")
    return tf.cast(maps, tf.float32)


def _check_int(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}. Received: {name}={value!r}")
    return int(value)


def find_peaks(heatmaps, threshold=0.1, max_peaks=32, stride=1, refine=True):
    """Keypoint candidates: local maxima of each confidence map above `threshold`.

    A pixel is a peak when it equals the maximum of its 3x3 neighbourhood (max-pool equality)
    and exceeds `threshold` (of a plateau of equal maxima, the first in raster order); the `max_peaks` highest peaks per image and keypoint are kept.
    With `refine`, each peak moves along x and along y to the vertex of the parabola through
    the logarithms of its value and its two neighbours' (when both are positive), by at most
    half a pixel: exact for a Gaussian peak `exp(-d^2 / sigma^2)`.

    Args:
        heatmaps: float `[B, H, W, K]`.
        threshold: minimum confidence of a peak.
        max_peaks: `N`, candidates kept per image and keypoint.
        stride: input pixels per map pixel.
        refine: sub-pixel refinement (default True).

    Returns:
        A dict of `"xy"` float32 `[B, K, N, 2]` (x, y) input pixels, `"scores"` float32
        `[B, K, N]` (the map's value at the peak pixel, 0 for padding) and `"valid"` bool
        `[B, K, N]`, peaks sorted by descending score.

    Example:
        >>> heat = np.zeros((1, 5, 5, 1), np.float32)
        >>> heat[0, 1, 3, 0] = 0.9                        # one peak at row 1, column 3
        >>> peaks = find_peaks(heat, max_peaks=2, refine=False)
        >>> peaks["xy"][0, 0, 0].numpy(), peaks["valid"][0, 0].numpy()
        (array([3., 1.], dtype=float32), array([ True, False]))
    """
    max_peaks = _check_int(max_peaks, "max_peaks")
    with tf.name_scope("find_peaks"):
        heatmaps = _check_maps(heatmaps, "heatmaps")
        shape = tf.shape(heatmaps)
        height, width, channels = shape[1], shape[2], shape[3]
        pooled = tf.nn.max_pool2d(heatmaps, 3, 1, "SAME")
        is_peak = (heatmaps >= pooled) & (heatmaps > threshold) & _first_of_ties(heatmaps)
        candidates = tf.where(is_peak, heatmaps, tf.fill(shape, -1.0))
        flat = tf.reshape(tf.transpose(candidates, [0, 3, 1, 2]), [shape[0], channels, -1])
        k = tf.minimum(max_peaks, height * width)
        scores, index = tf.math.top_k(flat, k=k)
        pad = [[0, 0], [0, 0], [0, max_peaks - k]]
        scores = tf.pad(scores, pad, constant_values=-1.0)
        index = tf.pad(index, pad)
        valid = scores > threshold
        rows, cols = index // width, index % width
        xy = tf.cast(tf.stack([cols, rows], axis=-1), tf.float32)
        if refine:
            xy += _parabola_offsets(heatmaps, rows, cols)
        xy = xy * float(stride)
        zero = tf.zeros_like(scores)
        return {"xy": tf.where(valid[..., None], xy, 0.0), "scores": tf.where(valid, scores, zero),
                "valid": valid}


def _first_of_ties(heatmaps):
    """False where an equal neighbour comes earlier in raster order (up-left, up, up-right,
    left), so that a plateau of equal maxima gives one peak."""
    padded = tf.pad(heatmaps, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-1.0)
    height, width = tf.shape(heatmaps)[1], tf.shape(heatmaps)[2]
    first = tf.ones_like(heatmaps, tf.bool)
    for drow, dcol in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        neighbour = padded[:, 1 + drow:1 + drow + height, 1 + dcol:1 + dcol + width]
        first &= heatmaps > neighbour
    return first


def _parabola_offsets(heatmaps, rows, cols):
    """Sub-pixel (dx, dy) `[B, K, N, 2]` of the peaks at `rows`, `cols` `[B, K, N]`."""
    shape = tf.shape(heatmaps)
    padded = tf.pad(heatmaps, [[0, 0], [1, 1], [1, 1], [0, 0]])  # 0 outside: no refinement
    batch = tf.broadcast_to(tf.range(shape[0])[:, None, None], tf.shape(rows))
    channel = tf.broadcast_to(tf.range(shape[3])[None, :, None], tf.shape(rows))

    def value(drow, dcol):
        index = tf.stack([batch, rows + 1 + drow, cols + 1 + dcol, channel], axis=-1)
        return tf.gather_nd(padded, index)

    centre = value(0, 0)
    offsets = []
    for before, after in ((value(0, -1), value(0, 1)), (value(-1, 0), value(1, 0))):
        ok = (before > 0) & (after > 0) & (centre > 0)
        lb, lc, la = (tf.math.log(tf.maximum(v, _TINY)) for v in (before, centre, after))
        curvature = lb - 2.0 * lc + la
        offset = tf.math.divide_no_nan(0.5 * (lb - la), curvature)
        ok &= curvature < 0
        offsets.append(tf.where(ok, tf.clip_by_value(offset, -0.5, 0.5), 0.0))
    return tf.stack(offsets, axis=-1)


def limb_scores(pafs, peaks, limbs, stride=1, num_samples=10, paf_threshold=0.05,
                min_fraction=0.8, image_height=None):
    """PAF line-integral scores of every candidate pair of every limb.

    Formula:
        For candidates d1 of keypoint j1 and d2 of j2 and the limb's field L_c, with
        u = (d2 - d1) / ||d2 - d1|| and samples p_m = d1 + m / (M - 1) (d2 - d1), m < M:

            E = (1 / M) sum_m L_c(p_m) . u  +  min(0.5 * image_height / ||d2 - d1|| - 1, 0)

        (Cao et al., eq. 10, sampled as their code does, with its prior against limbs longer
        than half the image). A pair counts only if at least `min_fraction` of the samples
        exceed `paf_threshold` and E > 0; the field is read at the nearest map pixel.

    Args:
        pafs: float `[B, H, W, 2L]` (channel 2l: x, 2l + 1: y of limb l).
        peaks: the dict of `find_peaks` (`"xy"` `[B, K, N, 2]`, `"valid"` `[B, K, N]`).
        limbs: `L` pairs `(j1, j2)`.
        stride: input pixels per map pixel.
        num_samples: `M`, samples along each candidate limb.
        paf_threshold: a sample agrees with the limb above this.
        min_fraction: fraction of samples that must agree.
        image_height: input height for the distance prior (default `H * stride`).

    Returns:
        float32 `[B, L, N, N]`: entry `[b, l, n1, n2]` scores candidate n1 of j1 against n2 of
        j2; `-inf` where the pair does not count.
    """
    num_samples = _check_int(num_samples, "num_samples", 2)
    with tf.name_scope("limb_scores"):
        pafs = _check_maps(pafs, "pafs")
        limbs = check_limbs(limbs)
        shape = tf.shape(pafs)
        height, width = shape[1], shape[2]
        if pafs.shape[-1] is not None and pafs.shape[-1] != 2 * len(limbs):
            raise ValueError(f"`pafs` must have 2 channels per limb ({2 * len(limbs)} for "
                             f"{len(limbs)} limbs). Received: pafs.shape={pafs.shape}")
        if image_height is None:
            image_height = tf.cast(height, tf.float32) * float(stride)
        xy, valid = peaks["xy"], peaks["valid"]
        start = tf.gather(xy, [a for a, _ in limbs], axis=1)[:, :, :, None]  # [B, L, N, 1, 2]
        end = tf.gather(xy, [b for _, b in limbs], axis=1)[:, :, None]  # [B, L, 1, N, 2]
        vector = end - start  # [B, L, N, N, 2]
        length = tf.norm(vector, axis=-1)
        unit = tf.math.divide_no_nan(vector, length[..., None])
        t = tf.linspace(0.0, 1.0, num_samples)[:, None]  # [M, 1]
        points = start[..., None, :] + t * vector[..., None, :]  # [B, L, N, N, M, 2]
        col = tf.clip_by_value(tf.cast(tf.round(points[..., 0] / stride), tf.int32), 0, width - 1)
        row = tf.clip_by_value(tf.cast(tf.round(points[..., 1] / stride), tf.int32), 0, height - 1)
        fields = tf.reshape(pafs, [shape[0], height, width, len(limbs), 2])
        fields = tf.transpose(fields, [0, 3, 1, 2, 4])  # [B, L, H, W, 2]
        sampled = tf.gather_nd(fields, tf.stack([row, col], axis=-1), batch_dims=2)
        along = tf.reduce_sum(sampled * unit[..., None, :], axis=-1)  # [B, L, N, N, M]
        prior = tf.minimum(0.5 * image_height / tf.maximum(length, _TINY) - 1.0, 0.0)
        score = tf.reduce_mean(along, axis=-1) + prior
        agree = tf.reduce_mean(tf.cast(along > paf_threshold, tf.float32), axis=-1)
        counts = ((agree >= min_fraction) & (score > 0) & (length > 0)
                  & tf.gather(valid, [a for a, _ in limbs], axis=1)[:, :, :, None]
                  & tf.gather(valid, [b for _, b in limbs], axis=1)[:, :, None])
        return tf.where(counts, score, float("-inf"))


def _greedy_matches(scores):
    """`(n1, n2, score)` triples of one limb, best first, each candidate used at most once."""
    n1, n2 = np.nonzero(np.isfinite(scores))
    order = np.argsort(-scores[n1, n2], kind="stable")
    used1, used2, matches = set(), set(), []
    for a, b in zip(n1[order], n2[order]):
        if a not in used1 and b not in used2:
            used1.add(a)
            used2.add(b)
            matches.append((int(a), int(b), float(scores[a, b])))
    return matches


def _group(limbs, matches, num_keypoints):
    """People as `{keypoint: candidate}` dicts plus their connection scores, grown limb by
    limb; two partial people sharing a matched limb merge when their keypoints do not clash."""
    people, owner = [], {}  # owner[(keypoint, candidate)] = person index
    for (j1, j2), limb_matches in zip(limbs, matches):
        for a, b, score in limb_matches:
            pa, pb = owner.get((j1, a)), owner.get((j2, b))
            if pa is None and pb is None:
                people.append({"parts": {j1: a, j2: b}, "links": [score]})
                owner[(j1, a)] = owner[(j2, b)] = len(people) - 1
            elif pb is None:
                if j2 not in people[pa]["parts"]:
                    people[pa]["parts"][j2] = b
                    people[pa]["links"].append(score)
                    owner[(j2, b)] = pa
            elif pa is None:
                if j1 not in people[pb]["parts"]:
                    people[pb]["parts"][j1] = a
                    people[pb]["links"].append(score)
                    owner[(j1, a)] = pb
            elif pa != pb and not set(people[pa]["parts"]) & set(people[pb]["parts"]):
                people[pa]["parts"].update(people[pb]["parts"])
                people[pa]["links"] += people[pb]["links"] + [score]
                for part, cand in people[pb]["parts"].items():
                    owner[(part, cand)] = pa
                people[pb] = None
    return [p for p in people if p is not None]


def assemble_people(heatmaps, pafs, limbs, stride=1, peak_threshold=0.1, max_peaks=32,
                    num_samples=10, paf_threshold=0.05, min_fraction=0.8, min_keypoints=2,
                    refine=True):
    """People from a batch of confidence maps and part affinity fields.

    `find_peaks` and `limb_scores` (batched TF) give candidates and pair scores; each limb's
    pairs are matched greedily by descending score, and the matches grouped into people in
    NumPy. A person's score is the mean of its keypoints' confidences and its limbs' scores.

    Args:
        heatmaps: float `[B, H, W, K]` (e.g. an OpenPose model's last `heatmaps` output).
        pafs: float `[B, H, W, 2L]`.
        limbs: `L` pairs `(j1, j2)`; listing a tree's limbs parents first (as
            `kcv.data.keypoints.COCO_PERSON_LIMBS` does) grows each person from its root.
        stride: input pixels per map pixel (8 for OpenPose).
        peak_threshold, max_peaks, refine: as `find_peaks`.
        num_samples, paf_threshold, min_fraction: as `limb_scores`.
        min_keypoints: people with fewer keypoints are dropped.

    Returns:
        A list with one `(keypoints, scores)` per image: float32 `[P, K, 3]` (x, y, confidence;
        all 0 for a missing keypoint) in input pixels, and float32 `[P]`, by descending score.

    Example:
        >>> from kcv.data.keypoints import confidence_maps, part_affinity_fields
        >>> person = [[[4.0, 4.0], [12.0, 4.0]]]
        >>> heat = confidence_maps(person, [[1, 1]], (16, 16), sigma=2.0)[None]
        >>> pafs = part_affinity_fields(person, [[1, 1]], [(0, 1)], (16, 16), 1.0)
        >>> [(keypoints, scores)] = assemble_people(heat, tf.reshape(pafs, (1, 16, 16, 2)),
        ...                                         [(0, 1)])
        >>> keypoints[0].round(3).tolist()
        [[4.0, 4.0, 1.0], [12.0, 4.0, 1.0]]

    Reference:
        Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields",
        CVPR 2017, section 2.4.
    """
    limbs = check_limbs(limbs)
    min_keypoints = _check_int(min_keypoints, "min_keypoints")
    heatmaps = _check_maps(heatmaps, "heatmaps")
    num_keypoints = heatmaps.shape[-1]
    check_limbs(limbs, num_keypoints)
    peaks = find_peaks(heatmaps, peak_threshold, max_peaks, stride, refine)
    scores = limb_scores(pafs, peaks, limbs, stride, num_samples, paf_threshold, min_fraction)
    xy, confidence = peaks["xy"].numpy(), peaks["scores"].numpy()
    scores = scores.numpy()
    results = []
    for b in range(scores.shape[0]):
        matches = [_greedy_matches(scores[b, c]) for c in range(len(limbs))]
        keypoints, person_scores = [], []
        for person in _group(limbs, matches, num_keypoints):
            if len(person["parts"]) < min_keypoints:
                continue
            out = np.zeros((num_keypoints, 3), np.float32)
            for part, cand in person["parts"].items():
                out[part] = (*xy[b, part, cand], confidence[b, part, cand])
            keypoints.append(out)
            person_scores.append((out[:, 2].sum() + sum(person["links"]))
                                 / (len(person["parts"]) + len(person["links"])))
        order = np.argsort(-np.asarray(person_scores), kind="stable")
        results.append((np.asarray(keypoints, np.float32).reshape(-1, num_keypoints, 3)[order],
                        np.asarray(person_scores, np.float32)[order]))
    return results
