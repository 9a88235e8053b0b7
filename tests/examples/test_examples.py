"""The other examples run end to end on tiny settings and write what they say they write: the
distributed one in its own Python process (it must split the CPU before TensorFlow starts), as
a user runs it; the others through their `main(argv)` in the test process (`run_example`)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A U-Net two levels deep with 4 filters on 32x32 images: the examples' code paths, at a
# fraction of their default model's cost.
TINY_UNET = ("--image-size", "32", "--filters", "4", "--depth", "2")


def _run(script, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_lr_finder_example(tmp_path, run_example):
    _, out = run_example("lr_finder.py", "--out", tmp_path, "--num-images", "32",
                         "--val-images", "16", "--num-steps", "12", "--epochs", "2", *TINY_UNET)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "lr_find.png").stat().st_size > 0 and results["png"].endswith(".png")
    assert results["suggested"]["lr"] == pytest.approx(100 * results["suggested/100"]["lr"])
    assert len(results["suggested"]["val_mean_iou"]) == 2
    assert "range test: " in out and "val_mean_iou" in out


@pytest.mark.slow
def test_distributed_training_example_on_two_logical_cpus(tmp_path):
    out = _run("distributed_training.py", "--cpu-devices", "2", "--epochs", "2",
               "--train-images", "32", "--val-images", "16", "--out", str(tmp_path), *TINY_UNET)
    assert "MirroredStrategy: 2 replicas; worker 0" in out
    assert (tmp_path / "unet.keras").stat().st_size > 0


@pytest.mark.slow
def test_deformable_conv_example(tmp_path, run_example):
    png = tmp_path / "sampling.png"
    _, out = run_example("deformable_conv.py", "--num-images", "64", "--epochs", "1",
                         "--output", png)
    assert png.stat().st_size > 0
    assert "plain" in out and "deformable" in out and "validation accuracy" in out
