"""The segmentation zoo runs end to end on tiny settings and writes its table, report and PNG."""

import json
import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_segmentation_zoo_tiny(tmp_path, capsys):
    module = runpy.run_path(os.path.join(ROOT, "examples", "segmentation_zoo.py"))
    out = tmp_path / "zoo"
    code = module["main"]([
        "--out", str(out), "--image-size", "32", "--train-images", "16", "--val-images", "4",
        "--epochs", "1", "--unet-filters", "4", "--unetpp-filters", "4", "--unetpp-depth", "2",
        "--latency-runs", "1", "--models", "UNet++",
    ])  # UNet++ alone: every model trains in tests/kcv/models, the quickstart runs UNet end to
    # end, and UNet++ is the one with the zoo's own code (mean of heads' losses, pruned levels)
    assert code == 0
    assert (out / "zoo.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["models"]] == ["UNet++"]
    assert 0.0 <= report["models"][0]["val_dice"] <= 1.0
    levels = report["unet_plus_plus_levels"]
    assert [lv["level"] for lv in levels] == [1, 2]
    assert levels[0]["parameters"] < levels[1]["parameters"] == report["models"][0]["parameters"]
    printed = capsys.readouterr().out
    assert "val Dice" in printed and "UNet++ pruned levels" in printed
