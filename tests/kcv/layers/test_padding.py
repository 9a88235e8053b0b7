"""ReflectionPadding2D against NumPy's reflect padding, plus the standard layer checks."""

import numpy as np
import pytest

from kcv.layers import ReflectionPadding2D

from kcv_testing import check_layer


@pytest.mark.parametrize("padding", [1, (2, 1), ((0, 3), (2, 1))])
def test_reflection_padding_matches_numpy(padding):
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    pairs = ((padding, padding),) * 2 if isinstance(padding, int) else tuple(
        (p, p) if isinstance(p, int) else p for p in padding)
    expected = np.pad(x, ((0, 0), *pairs, (0, 0)), mode="reflect")
    layer = ReflectionPadding2D(padding)
    np.testing.assert_array_equal(layer(x).numpy(), expected)
    assert layer.compute_output_shape(x.shape) == expected.shape


def test_reflection_padding_standard_checks():
    x = np.random.default_rng(1).normal(size=(2, 6, 5, 2)).astype(np.float32)
    check_layer(ReflectionPadding2D(((1, 2), (3, 0))), x)


def test_reflection_padding_errors():
    with pytest.raises(ValueError, match=r"non-negative int.* Received: padding=-1"):
        ReflectionPadding2D(-1)
    with pytest.raises(ValueError, match=r"Received: padding=\(1, 2, 3\)"):
        ReflectionPadding2D((1, 2, 3))
    with pytest.raises(ValueError, match=r"smaller than the padded size.*padding=3"):
        ReflectionPadding2D(3)(np.zeros((1, 3, 8, 1), np.float32))
