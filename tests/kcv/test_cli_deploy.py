"""`kcv export` (SavedModel with uint8 serving, TFLite int8 with calibration) and `kcv verify`
(parity, ops, size, latency, accuracy change, the per-mode PNG), run through `main(argv)`."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv.cli import main
from kcv.models import UNet


def _run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "unet.keras"
    UNet((16, 16, 3), 4, filters=4, depth=1).save(path)
    return str(path)


def test_export_saved_model_with_uint8_serving(capsys, model_path, tmp_path):
    code, out, err = _run(capsys, ["export", model_path, "--format", "saved_model",
                                   "--serving", "uint8", "--version", "1",
                                   str(tmp_path / "unet")])
    assert code == 0, err
    assert _json_lines(out)[-1]["output"] == str(tmp_path / "unet" / "1")
    fn = tf.saved_model.load(str(tmp_path / "unet" / "1")).signatures["serving_default"]
    x = np.random.default_rng(0).integers(0, 256, (1, 20, 24, 3)).astype("uint8")
    out = fn(image=tf.constant(x))
    assert out["mask"].shape == (1, 20, 24)  # back at the size sent


def test_export_int8_with_calibration_then_verify(capsys, model_path, tmp_path):
    tflite = str(tmp_path / "int8.tflite")
    code, out, err = _run(capsys, ["export", model_path, "--quantize", "int8", "--calibration",
                                   "synthetic", "--calibration-steps", "4", "--serving", "uint8",
                                   tflite])
    assert code == 0, err
    assert "4/4" in out  # the calibration progress bar
    assert _json_lines(out)[-1]["io_dtype"] == "uint8"
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=tflite).get_signature_runner()
    assert next(iter(runner.get_input_details().values()))["dtype"] == np.uint8
    float_path = str(tmp_path / "float32.tflite")
    assert _run(capsys, ["export", model_path, float_path])[0] == 0
    png = str(tmp_path / "modes.png")
    code, out, err = _run(capsys, ["verify", float_path, tflite, "--reference", model_path,
                                   "--data", "synthetic", "--num-images", "8", "--threads", "2",
                                   "--runs", "2", "--plot", png])
    assert code == 0, err
    keras_row, float_row, int8_row, plot = _json_lines(out)
    assert keras_row["mode"] == "keras" and 0 <= keras_row["miou"] <= 1
    assert float_row["max_abs_diff"] < 1e-4 and float_row["builtins_only"]
    assert abs(float_row["change"]["miou"]) < 1e-6  # same predictions as Keras
    assert "CONV_2D" in int8_row["ops"] and int8_row["threads"] == 2
    assert int8_row["change"]["miou"] == pytest.approx(int8_row["miou"] - keras_row["miou"])
    assert int8_row["bytes"] < float_row["bytes"] and int8_row["latency_ms"] > 0
    assert plot == {"plot": png}
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_export_a_folder_as_calibration(capsys, model_path, tmp_path):
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 256, (24, 24, 3)).astype("uint8")
        tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image))
    code, out, err = _run(capsys, ["export", model_path, "--quantize", "int8", "--calibration",
                                   str(folder), str(tmp_path / "m.tflite")])
    assert code == 0, err
    assert "3/3" in out


@pytest.mark.parametrize("argv, needle", [
    (["--quantize", "int8"], "--quantize int8 needs --calibration"),
    (["--format", "saved_model", "--quantize", "dynamic"], "--quantize applies to --format"),
    (["--calibration", "synthetic"], "--calibration applies to --quantize int8"),
    (["--version", "1"], "--version applies to --format saved_model"),
    (["--quantize", "int8", "--calibration", "/no/such/folder"], "'synthetic', 'digits' or"),
])
def test_export_errors_are_one_line(capsys, model_path, tmp_path, argv, needle):
    code, _, err = _run(capsys, ["export", model_path, str(tmp_path / "x"), *argv])
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_verify_and_serve_errors(capsys, tmp_path):
    code, _, err = _run(capsys, ["verify", str(tmp_path / "missing.tflite")])
    assert code == 1 and "no such artifact" in err
    code, _, err = _run(capsys, ["serve", str(tmp_path)])
    assert code == 1 and "numbered SavedModel versions" in err
