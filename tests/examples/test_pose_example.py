"""examples/pose.py runs end to end on tiny settings and writes its PNG and results."""

import json

import pytest


@pytest.mark.slow
def test_pose_example_on_tiny_settings(tmp_path, run_example):
    _, out = run_example("pose.py", "--epochs", "1", "--train-images", "8", "--val-images", "4",
                         "--image-size", "64", "--batch-size", "4", "--stages", "1",
                         "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= results["oks_ap"] <= 1.0 and results["wall_seconds"] > 0
    assert (tmp_path / "fields.png").stat().st_size > 0
    assert "OKS AP (pycocotools, 4 held-out images)" in out
