"""export.evaluate: top-1, mean IoU and Dice against scikit-learn; latency; the mode chart."""

import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

import export
from export import evaluate


def test_top1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    scores, labels = rng.random((50, 5)), rng.integers(0, 5, 50)
    assert evaluate.accuracy(scores, labels) == {
        "top1": pytest.approx(accuracy_score(labels, scores.argmax(-1)))}


def test_segmentation_miou_and_dice_match_scikit_learn():
    rng = np.random.default_rng(1)
    scores, labels = rng.random((3, 6, 7, 4)), rng.integers(0, 4, (3, 6, 7))
    predicted = scores.argmax(-1).ravel()
    got = evaluate.accuracy(scores, labels)
    foreground = [1, 2, 3]  # background left out
    assert got["miou"] == pytest.approx(jaccard_score(labels.ravel(), predicted,
                                                      labels=foreground, average="macro"))
    assert got["dice"] == pytest.approx(f1_score(labels.ravel(), predicted, labels=foreground,
                                                 average="macro"))
    assert got["pixel_accuracy"] == pytest.approx(accuracy_score(labels.ravel(), predicted))


def test_accuracy_errors():
    with pytest.raises(ValueError, match="labels"):
        evaluate.accuracy(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match="task"):
        evaluate.accuracy(np.zeros((2, 3)), np.zeros(2, int), task="pose")


def test_latency_and_plot(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    content = export.convert_to_tflite(model)
    assert evaluate.latency_ms(content, num_threads=2, num_runs=3) > 0
    rows = [{"mode": "float32", "latency_ms": 2.0, "top1": 0.9},
            {"mode": "int8", "latency_ms": 1.0, "top1": 0.89}]
    path = evaluate.plot_modes(rows, str(tmp_path / "modes.png"), metric="top1")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
