"""Synthetic stick figures: seeded, the keypoints lie on the drawn figure, and the COCO
keypoints file they write scores AP 1 against itself in pycocotools' OKS evaluation."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kcv.data.stick_figures import _LIMB_COLOURS, make_stick_figures, write_coco_keypoints_json


def test_seeded_shapes_and_padding():
    images, t = make_stick_figures(4, 64, seed=3, min_people=0, max_people=3)
    again, t2 = make_stick_figures(4, 64, seed=3, min_people=0, max_people=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(t["keypoints"], t2["keypoints"])
    assert images.shape == (4, 64, 64, 3) and t["visibility"].shape == (4, 3, 17)
    present = t["visibility"].any(-1)
    assert set(np.unique(t["visibility"][present])) == {2}
    assert not t["keypoints"][~present].any() and not t["boxes"][~present].any()
    kp = t["keypoints"][present]
    assert kp.min() >= 0 and kp.max() <= 63


def test_the_keypoints_lie_on_the_figures():
    # Noise-free images: the pixel under every wrist and ankle has its limb's colour, not
    # the background's texture (the ends of the limbs are drawn with the limb).
    images, t = make_stick_figures(3, 96, seed=0, min_people=1, max_people=1, noise=0.0)
    for image, kp in zip(images, t["keypoints"][:, 0]):
        for joint in (9, 10, 15, 16):
            x, y = np.round(kp[joint]).astype(int)
            assert np.abs(image[y, x] - _LIMB_COLOURS).max(-1).min() < 1e-6


def test_written_ground_truth_scores_ap_one_against_itself(tmp_path):
    _, t = make_stick_figures(3, 64, seed=1, min_people=1, max_people=2)
    path = str(tmp_path / "gt.json")
    count = write_coco_keypoints_json(path, t, 64)
    assert count == int(t["visibility"].any(-1).sum())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(path)
        results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
                    "score": 1.0} for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_images": -1}, "num_images=-1"), ({"image_size": 16}, "image_size=16"),
     ({"min_people": 2, "max_people": 1}, "min_people=2")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_stick_figures(**{"num_images": 1, **kwargs})
