"""kcv.layers.EuclideanDistance / euclidean_distance: NumPy values, exact 0 with a finite
gradient for identical inputs, and the shared layer checks."""

import doctest

import numpy as np
import pytest
import tensorflow as tf

from kcv.layers import EuclideanDistance, distance, euclidean_distance

from kcv_testing import check_gradients, check_layer


def _pair(seed=0, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(2)]


def test_check_layer():
    check_layer(lambda: EuclideanDistance(), _pair())  # squared=True: test_matches_numpy


@pytest.mark.parametrize("squared", [False, True])
def test_matches_numpy(squared):
    a, b = _pair(1)
    d2 = ((a.astype(np.float64) - b) ** 2).sum(1, keepdims=True)
    expected = d2 if squared else np.sqrt(d2)
    np.testing.assert_allclose(EuclideanDistance(squared=squared)([a, b]), expected, rtol=1e-6)


def test_identical_inputs_give_exact_zero_and_finite_zero_gradient():
    a = tf.Variable(np.array([[1.0, 2.0], [3.0, -1.0]], "float32"))
    b = tf.constant([[1.0, 2.0], [0.0, 3.0]])
    with tf.GradientTape() as tape:
        d = euclidean_distance(a, b)
        total = tf.reduce_sum(d)
    grad = tape.gradient(total, a).numpy()
    assert d.numpy()[0, 0] == 0.0 and d.numpy()[1, 0] == pytest.approx(5.0)
    np.testing.assert_array_equal(grad[0], [0.0, 0.0])
    np.testing.assert_allclose(grad[1], [3.0 / 5.0, -4.0 / 5.0], rtol=1e-6)  # (a - b) / |a - b|


def test_gradient_matches_finite_differences_away_from_zero():
    a, b = _pair(2, (3, 4))
    check_gradients(lambda x, y: euclidean_distance(x, y), [a, b])


def test_docstring_examples_run():
    result = doctest.testmod(distance, extraglobs={"np": np})
    assert result.attempted >= 2 and result.failed == 0


def test_errors():
    with pytest.raises(TypeError, match="`squared` must be a bool. Received: squared='yes'"):
        EuclideanDistance(squared="yes")
    with pytest.raises(ValueError, match="EuclideanDistance inputs need the same last dimension"):
        EuclideanDistance()([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match=r"EuclideanDistance expects two inputs \[a, b\]"):
        EuclideanDistance()(np.zeros((2, 3)))
