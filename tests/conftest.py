"""Shared pytest set-up: quiet TensorFlow, a fixed seed, float32 policy restored after each test,
and the tests marked `slow` run first."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# NumPy's OpenBLAS (the references, scikit-learn in the examples) on one thread per process:
# `make test` already runs one worker per core, and idle OpenBLAS threads spin on the CPU the
# other worker needs (set before NumPy is first imported; subprocesses inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(__file__))  # makes `kcv_testing` importable from any test

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(1234)
    yield
    keras.mixed_precision.set_global_policy("float32")


def pytest_collection_modifyitems(items):
    """Runs the tests marked `slow` first (otherwise in collection order).

    `make test` has pytest-xdist send one test at a time to whichever worker is free
    (`--dist load --maxschedchunk 1`), so long tests started first are evened out by the
    short ones that follow; a long test collected last (e.g. in tests/kcv/training/) would
    leave the other worker idle while it runs. Every worker collects the same order, as xdist
    requires.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
