"""Shared inputs of the loss tests."""

import numpy as np
import pytest


@pytest.fixture
def multiclass():
    """Sparse labels `[3, 5, 6]` of 4 classes and logits `[3, 5, 6, 4]`."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 5, 6)).astype(np.int32)
    return labels, logits


@pytest.fixture
def binary():
    """0/1 masks `[3, 6, 6, 1]` and logits of the same shape."""
    rng = np.random.default_rng(2)
    y_true = (rng.random((3, 6, 6, 1)) > 0.6).astype(np.float32)
    logits = (2 * rng.normal(size=(3, 6, 6, 1))).astype(np.float32)
    return y_true, logits
