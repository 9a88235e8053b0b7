"""examples/pose.py runs end to end on tiny settings and writes its PNG and results."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_pose_example_on_tiny_settings(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "pose.py"), "--epochs", "1",
         "--train-images", "8", "--val-images", "4", "--image-size", "64", "--batch-size", "4",
         "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= results["oks_ap"] <= 1.0 and results["wall_seconds"] > 0
    assert (tmp_path / "fields.png").stat().st_size > 0
    assert "OKS AP (pycocotools, 4 held-out images)" in proc.stdout
