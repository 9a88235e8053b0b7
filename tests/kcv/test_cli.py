"""The `kcv` command, run in-process through `main(argv)` (and as `python -m kcv`): help,
one-line errors, train/lr-find on the synthetic task, export, receptive field."""

import importlib
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv.cli import main

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = ["--model", "unet", "--data", "synthetic", "--image-size", "32", "--filters", "8",
         "--depth", "2", "--batch-size", "8"]


def _run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad arguments
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


_COMMANDS = ("train", "lr-find", "export", "verify", "serve", "convert-torchvision",
             "receptive-field")


def _python_m_kcv(*args, timeout=120):
    path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "kcv", *args], capture_output=True, text=True,
                          timeout=timeout,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path))


def test_help_lists_the_commands(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    for command in _COMMANDS:
        assert command in out


def test_python_m_kcv_help_lists_the_commands():
    proc = _python_m_kcv("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: kcv ")
    listed = re.findall(r"^    ([a-z-]+)", proc.stdout, re.M)  # the sub-command lines
    assert listed == list(_COMMANDS)


def test_console_script_is_kcv_cli_main():
    with open(os.path.join(_ROOT, "pyproject.toml"), encoding="utf-8") as f:
        section = f.read().split("[project.scripts]\n")[1].split("\n[")[0]
    assert section.strip() == 'kcv = "kcv.cli:main"'
    module, name = "kcv.cli", "main"
    assert getattr(importlib.import_module(module), name) is main


@pytest.mark.parametrize("argv, needle, status", [
    (["train", "--epochs", "-1"], "--epochs: must be a positive integer, got '-1'", 2),
    (["train", "--model", "resnet9000"], "invalid choice: 'resnet9000'", 2),
    (["frobnicate"], "invalid choice: 'frobnicate'", 2),
    (["export", "model.keras"], "as OUT or --output", 1),
    (["train", "--data", "/no/such/folder"], "--data must be 'synthetic' or an existing", 1),
    (["train", "--data", "synthetic", "--num-classes", "7"], "synthetic data has 4 classes", 1),
    (["export", "/no/such.keras", "--output", "x.tflite"], "no such model file", 1),
    (["receptive-field", "model.h5"], "MODEL must be a .keras file", 1),
])
def test_bad_arguments_get_one_line(capsys, argv, needle, status):
    code, out, err = _run(capsys, argv)
    assert code == status
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_data_folder_without_num_classes(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code, _, err = _run(capsys, ["train", "--data", str(tmp_path)])
    assert code == 1 and "--num-classes is required" in err


def _write_folder(root, n=8, size=32):
    images, masks = make_shapes_arrays(n, size)
    for sub in ("images", "masks"):
        os.makedirs(root / sub, exist_ok=True)
    for i in range(n):
        png = tf.io.encode_png(tf.cast(images[i] * 255, tf.uint8))
        tf.io.write_file(str(root / "images" / f"{i}.png"), png)
        tf.io.write_file(str(root / "masks" / f"{i}.png"),
                         tf.io.encode_png(tf.cast(masks[i][..., None], tf.uint8)))


def make_shapes_arrays(n, size):
    from kcv.data import make_shapes

    images, masks = make_shapes(n, size, seed=3)
    return np.clip(images, 0, 1), masks


def test_train_on_a_folder(capsys, tmp_path):
    _write_folder(tmp_path / "data")
    code, out, err = _run(capsys, ["train", "--data", str(tmp_path / "data"), "--num-classes",
                                   "4", "--image-size", "32", "--filters", "4", "--depth", "1",
                                   "--epochs", "1", "--output", str(tmp_path / "run")])
    assert code == 0, err
    assert os.path.isfile(_last_json(out)["model"])


@pytest.mark.slow
def test_lr_find_then_train_at_the_suggestion_then_export(capsys, tmp_path):
    """lr-find writes the PNG and the curve; training at its suggestion lowers the loss; the
    trained model exports to TFLite through `python -m kcv`. (The full
    convergence study on the synthetic task is examples/lr_finder.py.)"""
    png = str(tmp_path / "lr.png")
    code, out, err = _run(capsys, ["lr-find", *SMALL, "--num-images", "64", "--num-steps", "40",
                                   "--start-lr", "1e-5", "--end-lr", "10", "--output", png])
    assert code == 0, err
    found = _last_json(out)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((tmp_path / "lr.json").read_text())
    np.testing.assert_allclose(curve["learning_rates"],
                               1e-5 * 1e6 ** (np.arange(len(curve["losses"])) / 39), rtol=1e-9)
    assert found["suggested_lr"] in curve["learning_rates"]
    run = tmp_path / "run"
    code, out, err = _run(capsys, ["train", *SMALL, "--num-images", "64", "--epochs", "3",
                                   "--lr", f"{found['suggested_lr']:.6g}", "--schedule",
                                   "cosine", "--output", str(run)])
    assert code == 0, err
    history = json.loads((run / "history.json").read_text())
    assert history["loss"][-1] < 0.8 * history["loss"][0], history
    assert sorted(os.listdir(run / "checkpoints")) == [f"epoch_{e:03d}.keras" for e in (1, 2, 3)]
    assert not (run / "backup").exists()

    tflite = str(tmp_path / "unet.tflite")
    proc = _python_m_kcv("export", str(run / "model.keras"), "--output", tflite, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tflite, "rb") as f:
        assert f.read(8)[4:] == b"TFL3"


def test_receptive_field_of_a_saved_model_matches_hand_count(capsys, tmp_path):
    # conv3 -> 3, conv3 -> 5, pool2/2 -> 6 (jump 2), conv3 -> 6 + 2 * 2 = 10 (jump 2)
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    h = keras.layers.Conv2D(2, 3, padding="same")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    out = keras.layers.Conv2D(2, 3, padding="same", name="last")(h)
    path = str(tmp_path / "m.keras")
    keras.Model(inputs, out).save(path)
    code, out_text, err = _run(capsys, ["receptive-field", path])
    assert code == 0, err
    result = _last_json(out_text)
    assert result["size"] == [10, 10] and result["jump"] == [2, 2]


def test_receptive_field_of_a_named_model(capsys):
    # U-Net bottleneck by hand: two 3x3 convs per level, 2x2 pools: 5, 6 (jump 2), 14, 16
    # (jump 4), 32, 36 (jump 8), 68, 76 (jump 16), bottleneck 76 + 2 * 2 * 16 = 140.
    code, out, err = _run(capsys, ["receptive-field", "unet", "--input-size", "64", "--layer",
                                   "bottleneck_conv2"])
    assert code == 0, err
    result = _last_json(out)
    assert result["size"] == [140, 140] and result["jump"] == [16, 16]
