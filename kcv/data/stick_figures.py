"""Seeded synthetic stick figures with known COCO-style skeletons (17 keypoints).

Each image holds `min_people`..`max_people` front-facing figures over a textured background:
a head disc, and the 16 limbs of `kcv.data.keypoints.COCO_PERSON_LIMBS` drawn as thick
segments, each limb kind in its own colour (so that left and right can be told apart, as
clothing and pose let one tell them apart in photographs). Arm and leg angles, size and
position are random; every keypoint is labelled visible (2), as COCO marks them. The
ground truth is exact, so the data can test a pose pipeline end to end (targets, model,
assembly, OKS evaluation).
"""

import json

import numpy as np

from kcv.data.keypoints import COCO_KEYPOINT_NAMES, COCO_PERSON_LIMBS
from kcv.data.synthetic import _background, _finish

__all__ = ["make_stick_figures", "write_coco_keypoints_json"]

_NUM_KEYPOINTS = len(COCO_KEYPOINT_NAMES)
_LIMB_COLOURS = np.array([  # one colour per limb of COCO_PERSON_LIMBS
    [1.0, 1.0, 0.2], [1.0, 0.8, 0.2], [0.9, 0.9, 0.9], [0.7, 0.7, 0.7], [0.2, 1.0, 0.2],
    [0.2, 0.6, 1.0], [0.0, 0.8, 0.4], [0.0, 0.5, 0.2], [0.3, 0.3, 1.0], [0.1, 0.1, 0.6],
    [0.8, 0.2, 0.8], [1.0, 0.5, 0.0], [1.0, 0.2, 0.2], [0.6, 0.0, 0.0], [0.0, 1.0, 1.0],
    [0.0, 0.5, 0.6],
], np.float32)


def _figure(rng, height, cx, top):
    """Keypoints `[17, 2]` (x, y) of one figure of `height` pixels, centred at `cx`."""
    h = height
    points = np.zeros((_NUM_KEYPOINTS, 2))
    head = np.array([[0.0, 0.08], [0.03, 0.06], [-0.03, 0.06], [0.06, 0.075], [-0.06, 0.075],
                     [0.12, 0.2], [-0.12, 0.2]])
    points[:7] = head
    points[11], points[12] = (0.08, 0.55), (-0.08, 0.55)
    for side, (shoulder, elbow, wrist, hip, knee, ankle) in ((1, (5, 7, 9, 11, 13, 15)),
                                                            (-1, (6, 8, 10, 12, 14, 16))):
        upper, lower = rng.uniform(-0.4, 1.6), rng.uniform(-0.6, 1.0)
        points[elbow] = points[shoulder] + 0.17 * np.array([side * np.sin(upper), np.cos(upper)])
        fore = upper + lower
        points[wrist] = points[elbow] + 0.15 * np.array([side * np.sin(fore), np.cos(fore)])
        thigh, shin = rng.uniform(-0.1, 0.5), rng.uniform(-0.5, 0.2)
        points[knee] = points[hip] + 0.22 * np.array([side * np.sin(thigh), np.cos(thigh)])
        leg = thigh + shin
        points[ankle] = points[knee] + 0.22 * np.array([side * np.sin(leg), np.cos(leg)])
    return points * h + np.array([cx, top])


def _draw(image, points, thickness, grid):
    """Draws the limbs (distance to each segment below `thickness`) and the head disc."""
    yy, xx = grid
    for colour, (a, b) in zip(_LIMB_COLOURS, COCO_PERSON_LIMBS):
        p, q = points[a], points[b]
        d = q - p
        t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(d @ d, 1e-9), 0.0, 1.0)
        dist2 = (xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2
        image[dist2 <= thickness**2] = colour
    nose = points[0]
    head = (xx - nose[0]) ** 2 + (yy - nose[1]) ** 2 <= (2.0 * thickness) ** 2
    image[head] = 0.5 * image[head] + 0.5 * np.array([1.0, 0.85, 0.7], np.float32)


def make_stick_figures(num_images, image_size=64, seed=0, min_people=1, max_people=2,
                       noise=0.04):
    """Generates stick-figure images with their exact COCO-style keypoints.

    Args:
        num_images: how many images.
        image_size: height and width in pixels (>= 32).
        seed: the seed; the same seed gives the same data.
        min_people, max_people: people per image (inclusive range, max_people >= 1).
        noise: standard deviation of the Gaussian pixel noise.

    Returns:
        `(images, targets)`: float32 `[N, S, S, 3]` in [0, 1], and a dict of `"keypoints"`
        float32 `[N, P, 17, 2]` (x, y) pixels, `"visibility"` int32 `[N, P, 17]` (2 visible,
        0 for the padding of images with fewer than `P = max_people` people) and `"boxes"`
        float32 `[N, P, 4]` `[y1, x1, y2, x2]` around each figure (zeros for padding).

    Example:
        >>> images, targets = make_stick_figures(2, image_size=64, seed=0)
        >>> images.shape, targets["keypoints"].shape
        ((2, 64, 64, 3), (2, 2, 17, 2))
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"`num_images` must be a non-negative int. Received: "
                         f"num_images={num_images!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"`image_size` must be an int >= 32. Received: image_size={image_size!r}")
    if not (isinstance(min_people, int) and isinstance(max_people, int)
            and 0 <= min_people <= max_people and max_people >= 1):
        raise ValueError("`min_people` and `max_people` must be ints with 0 <= min_people <= "
                         f"max_people, max_people >= 1. Received: min_people={min_people!r}, "
                         f"max_people={max_people!r}")
    rng = np.random.default_rng(seed)
    size = image_size
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((num_images, size, size, 3), np.float32)
    keypoints = np.zeros((num_images, max_people, _NUM_KEYPOINTS, 2), np.float32)
    visibility = np.zeros((num_images, max_people, _NUM_KEYPOINTS), np.int32)
    boxes = np.zeros((num_images, max_people, 4), np.float32)
    for n in range(num_images):
        _, image = _background(rng, size, grid + 0.5)
        for p in range(int(rng.integers(min_people, max_people + 1))):
            height = rng.uniform(0.5, 0.85) * size
            cx = rng.uniform(0.25 * height, size - 0.25 * height)
            top = rng.uniform(0.0, size - 0.95 * height)
            points = np.clip(_figure(rng, height, cx, top), 0.0, size - 1.0)
            _draw(image, points, max(1.0, height / 40.0), grid)
            keypoints[n, p], visibility[n, p] = points, 2
            (x1, y1), (x2, y2) = points.min(0), points.max(0)
            boxes[n, p] = (y1, x1, y2, x2)
        images[n] = _finish(rng, image, noise)
    return images, {"keypoints": keypoints, "visibility": visibility, "boxes": boxes}


def write_coco_keypoints_json(annotations_json, targets, image_size):
    """Writes keypoint ground truth as a COCO person-keypoints file (for pycocotools).

    Images get ids 1..N (file names `000001.png`, ...; no image files are written), the one
    category is `person` (id 1) with COCO's keypoint names and skeleton (1-based), and each
    person with a labelled keypoint is an annotation with `keypoints` `[x1, y1, v1, ...]`,
    `num_keypoints`, `bbox` `[x, y, w, h]` and `area` (the box's, which scales COCO's OKS).

    Args:
        annotations_json: path of the JSON file to write.
        targets: the dict of `make_stick_figures` (`"keypoints"`, `"visibility"`, `"boxes"`).
        image_size: `(height, width)` of the images, or an int.

    Returns:
        The number of annotations written.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    keypoints, visibility = np.asarray(targets["keypoints"]), np.asarray(targets["visibility"])
    boxes = np.asarray(targets["boxes"])
    images, annotations = [], []
    for n in range(len(keypoints)):
        images.append({"id": n + 1, "file_name": f"{n + 1:06d}.png", "height": int(height),
                       "width": int(width)})
        for p in range(keypoints.shape[1]):
            if not visibility[n, p].any():
                continue
            y1, x1, y2, x2 = (float(v) for v in boxes[n, p])
            flat = np.concatenate([keypoints[n, p], visibility[n, p, :, None]], -1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": n + 1, "category_id": 1, "iscrowd": 0,
                "keypoints": [float(v) for v in flat.ravel()],
                "num_keypoints": int((visibility[n, p] > 0).sum()),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": 1, "name": "person", "supercategory": "person",
                   "keypoints": list(COCO_KEYPOINT_NAMES),
                   "skeleton": [[a + 1, b + 1] for a, b in COCO_PERSON_LIMBS]}]
    with open(annotations_json, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return len(annotations)
