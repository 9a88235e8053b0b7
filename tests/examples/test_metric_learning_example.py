"""examples/metric_learning.py runs end to end on tiny settings and writes what it promises; its
raw-pixel nearest neighbour agrees with scikit-learn's KNeighborsClassifier."""

import json
import os
import runpy

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_metric_learning_example_tiny(tmp_path):
    module = runpy.run_path(os.path.join(ROOT, "examples", "metric_learning.py"))
    code = module["main"](["--out", str(tmp_path), "--splits", "1", "--dim", "8",
                           "--siamese-epochs", "1", "--pairs-per-epoch", "256",
                           "--am-epochs", "1", "--eval-pairs", "200"])
    assert code == 0
    for name in ("projection.png", "roc.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == {"train": 898, "val": 359, "test": 540}
    names = [r["name"] for r in report["per_split"][0]]
    assert names == ["raw pixels", "Siamese + contrastive", "AM-Softmax"]
    for r in report["per_split"][0]:
        assert 0.0 <= r["nn_top1"] <= 1.0 and 0.0 <= r["test_roc_auc"] <= 1.0
        assert 0.5 <= r["val_verification_accuracy"] <= 1.0  # at the best threshold: >= chance
    data = module["split_digits"](0)
    flat = {k: v[0].reshape(len(v[0]), -1) for k, v in data.items()}
    knn = KNeighborsClassifier(1).fit(flat["train"], data["train"][1])
    assert report["per_split"][0][0]["nn_top1"] == pytest.approx(
        knn.score(flat["test"], data["test"][1]))
    assert not set(map(bytes, data["train"][0])) & set(map(bytes, data["test"][0]))  # by image
    tflite = report["tflite_am_softmax_embedding_split0"]
    assert tflite["builtins_only"] and tflite["max_abs_diff"] <= 1e-4
    assert np.isfinite(report["wall_time_seconds"])
