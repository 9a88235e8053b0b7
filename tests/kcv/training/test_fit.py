"""Resumable training: a process SIGKILLed mid-epoch and started again ends with the weights of
an uninterrupted run (the outside reference), having run only the remaining epochs."""

import glob
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kcv.training import fit

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_job.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(JOB))))


def _start(run_dir, *pause):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    os.makedirs(run_dir, exist_ok=True)
    return subprocess.Popen([sys.executable, JOB, str(run_dir), *map(str, pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=120):
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]


def _weights(run_dir):
    return [np.load(f) for f in sorted(glob.glob(os.path.join(run_dir, "final_*.npy")))]


def _epochs(run_dir):
    with open(os.path.join(run_dir, "epochs.txt")) as f:
        return [int(line) for line in f.read().split()]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    reference = _start(clean)
    victim = _start(killed, 2, 3)  # pauses after batch 3 of epoch 2 (of 0..3), 8 batches/epoch
    deadline = time.monotonic() + 120
    while not (killed / "paused").exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training process never reached the pause"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert _epochs(killed) == [0, 1, 2]
    assert (killed / "backup").is_dir()
    assert not glob.glob(str(killed / "final_*.npy"))

    os.remove(killed / "epochs.txt")
    _finish(_start(killed))  # the same command again
    _finish(reference)
    assert _epochs(killed) == [2, 3]  # resumed from the end of epoch 1, redid epoch 2
    assert _epochs(clean) == [0, 1, 2, 3]
    want, got = _weights(clean), _weights(killed)
    assert len(want) == len(got) == 8
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert not (killed / "backup").exists()  # deleted once training completed
    assert sorted(os.listdir(killed / "ckpt")) == [f"epoch_{e:03d}.keras" for e in (1, 2, 3, 4)]


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def test_checkpoint_best_only_and_history(tmp_path):
    model = _model()
    x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0]], np.float32)
    history = fit(model, x, y, epochs=3, batch_size=4, verbose=0, validation_data=(x, y),
                  checkpoint_dir=str(tmp_path), save_best_only=True,
                  backup_dir=str(tmp_path / "b"))
    assert len(history.history["loss"]) == 3
    assert os.listdir(tmp_path) == ["best.keras"]
    reloaded = keras.saving.load_model(str(tmp_path / "best.keras"))
    best = int(np.argmin(history.history["val_loss"]))
    assert best == 2  # SGD on a linear least-squares problem improves every epoch here
    np.testing.assert_allclose(reloaded.evaluate(x, y, verbose=0),
                               history.history["val_loss"][best], rtol=1e-5)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="compiled"):
        fit(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="backup_dir=3"):
        fit(_model(), np.ones((2, 2)), np.ones((2, 1)), backup_dir=3)
    with pytest.raises(ValueError, match="keras.Model"):
        fit("model", np.ones((2, 2)))
