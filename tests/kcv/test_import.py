"""`import kcv` refuses any Keras backend but TensorFlow, with a message that says what to do."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_import_with_other_backend_fails_clearly(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, "-c", "import kcv"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "kcv requires the TensorFlow backend" in proc.stderr
    assert f"KERAS_BACKEND='{backend}'" in proc.stderr


def test_import_with_tensorflow_backend():
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    code = "import kcv, keras; print(keras.backend.backend())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("tensorflow")
