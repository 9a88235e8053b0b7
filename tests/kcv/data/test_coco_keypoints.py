"""The COCO keypoints reader: stick figures written as PNGs plus a person-keypoints file come
back with their keypoints scaled by the resize, visibility flags kept, crowds left out."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kcv.data.coco_keypoints import coco_keypoints
from kcv.data.stick_figures import make_stick_figures, write_coco_keypoints_json


def _write(tmp_path):
    images, t = make_stick_figures(3, 64, seed=4, min_people=1, max_people=2)
    for n, image in enumerate(images, start=1):
        png = tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8))
        tf.io.write_file(str(tmp_path / f"{n:06d}.png"), png)
    path = tmp_path / "kp.json"
    write_coco_keypoints_json(str(path), t, 64)
    return path, t


def test_round_trip_with_resize(tmp_path):
    path, t = _write(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["keypoints"][2] = 1  # labelled, not visible: kept as 1
    data["annotations"].append({**data["annotations"][1], "id": 99, "iscrowd": 1})
    path.write_text(json.dumps(data))
    ds = coco_keypoints(str(path), str(tmp_path), (32, 128), batch_size=3, max_people=2,
                        shuffle=False)
    images, got = next(iter(ds))
    assert images.shape == (3, 32, 128, 3)
    expected = t["keypoints"] * np.array([2.0, 0.5], np.float32)  # x * 128/64, y * 32/64
    np.testing.assert_allclose(got["keypoints"], expected, atol=1e-4)
    vis = t["visibility"].copy()
    vis[0, 0, 0] = 1
    np.testing.assert_array_equal(got["visibility"], vis)
    np.testing.assert_allclose(got["boxes"], t["boxes"] * np.array([0.5, 2, 0.5, 2]), atol=1e-4)


def test_errors_name_the_problem(tmp_path):
    path, _ = _write(tmp_path)
    with pytest.raises(ValueError, match="more than `max_people`=1"):
        coco_keypoints(str(path), str(tmp_path), 32, max_people=1)
    with pytest.raises(ValueError, match="image_size=0"):
        coco_keypoints(str(path), str(tmp_path), 0)
    data = json.loads(path.read_text())
    data["annotations"][0]["keypoints"] = [1.0, 2.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="51 `keypoints`"):
        coco_keypoints(str(path), str(tmp_path), 32, max_people=2)
