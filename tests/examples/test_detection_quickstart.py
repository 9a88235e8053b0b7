"""examples/detection_quickstart.py --quick runs end to end in its own process, writes what it
says it writes, and its exports (uint8 SavedModel, float32 and int8-weight TFLite) give the
Keras detections."""

import json
import os
import subprocess
import sys

import pytest

from kcv.metrics.coco import METRIC_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOSSES = {"loss", "rpn_objectness", "rpn_box", "classifier", "box_reg"}


@pytest.mark.slow
def test_detection_quickstart_quick(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "detection_quickstart.py"), "--quick",
         "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["errors"] == {} and all(report["checks"].values()), report["checks"]
    assert "AP50_at_least_0.80" not in report["checks"]  # no AP target for 4 training steps
    assert set(report["coco"]) == set(METRIC_NAMES)
    assert all(-1.0 <= v <= 1.0 for v in report["coco"].values())
    assert set(report["history"]) == LOSSES and report["epochs"] == 1
    assert report["steps"] == 4 and report["train_cpu_seconds"] > 0
    assert report["settings"]["image_size"] == 64 and report["settings"]["quick"]
    for name in ("detections.png", "history.png", "saved_model/saved_model.pb",
                 "detector.tflite", "detector_int8_weights.tflite"):
        assert (tmp_path / name).stat().st_size > 0, name
    for step in ("saved_model", "tflite_fp32"):  # int8 weights are judged by their AP50
        assert report[step]["counts_equal"] and report[step]["classes_equal"], report[step]
    for step in ("tflite_fp32", "tflite_int8_weights"):
        assert report[step]["builtins_only"] and set(report[step]["coco"]) == set(METRIC_NAMES)
    assert "Held-out COCO box numbers (pycocotools)" in proc.stdout
