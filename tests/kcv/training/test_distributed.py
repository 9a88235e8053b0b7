"""Training that really distributes: MirroredStrategy over two logical CPU devices and a
two-process MultiWorkerMirroredStrategy cluster on loopback, each compared with one device on
the same global batch (the outside reference). Devices and TF_CONFIG must be set before TF
starts, so each run is a subprocess (`distributed_job.py`)."""

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from kcv.training.strategy import choose_strategy

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_job.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(JOB))))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _run(args, timeout=120, **env):
    proc = subprocess.run([sys.executable, JOB, *args], env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _load(out_dir, prefix):
    return [np.load(f) for f in sorted(glob.glob(os.path.join(out_dir, f"{prefix}_*.npy")))]


def _assert_same(got, want, atol):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def _assert_trained(final, initial):
    moved = max(float(np.abs(a - b).max()) for a, b in zip(final, initial))
    assert moved > 1e-2, moved


@pytest.mark.slow
def test_mirrored_two_devices_equals_one_device(tmp_path):
    _run(["mirrored", str(tmp_path)])
    single, mirrored = _load(tmp_path, "single"), _load(tmp_path, "mirrored")
    _assert_trained(single, _load(tmp_path, "initial"))
    _assert_same(mirrored, single, atol=1e-5)


@pytest.mark.slow
def test_segmentation_models_train_under_mirrored_strategy(tmp_path):
    _run(["segmentation", str(tmp_path)], timeout=600)
    results = json.loads((tmp_path / "segmentation.json").read_text())
    assert sorted(results) == ["DeepLabV3", "HRNet", "UNet", "UNetPlusPlus"]
    for name, r in results.items():
        assert r["replicas"] == 2 and r["mirrored"], (name, r)
        assert np.isfinite(r["losses"]).all() and np.isfinite(r["eval"]), (name, r)
        assert r["losses"][-1] < 0.9 * r["losses"][0], (name, r["losses"])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_finish_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, JOB, "worker", str(tmp_path)],
                                      env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    w0, w1 = _load(tmp_path, "worker0"), _load(tmp_path, "worker1")
    _assert_same(w1, w0, atol=0)  # synchronous all-reduce: bit-identical replicas
    # and the same as one device on the global batch (computed here, in this process)
    spec = importlib.util.spec_from_file_location("distributed_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    initial = _load(tmp_path, "initial0")
    reference = job.train(None, initial)
    _assert_trained(reference, initial)
    _assert_same(w0, reference, atol=1e-5)


def test_strategy_on_one_device_is_the_default(monkeypatch):
    """This process has one CPU device and no TF_CONFIG (the two-device choice is asserted
    inside the mirrored job, the multi-worker one inside each worker)."""
    import tensorflow as tf

    from kcv.training import strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy() is tf.distribute.get_strategy()
    assert not tf.distribute.has_strategy() and strategy().num_replicas_in_sync == 1


@pytest.mark.parametrize("args, expected", [
    ((2, False, 0, 1), "multi_worker"), ((3, True, 4, 1), "multi_worker"),
    ((1, True, 2, 1), "tpu"), ((0, False, 2, 1), "mirrored_gpu"),
    ((0, False, 1, 2), "default"), ((0, False, 0, 2), "mirrored_cpu"),
    ((0, False, 1, 1), "default"), ((0, False, 0, 1), "default"),
])
def test_choice_rule(args, expected):
    assert choose_strategy(*args) == expected


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    from kcv.training import strategy

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy()
