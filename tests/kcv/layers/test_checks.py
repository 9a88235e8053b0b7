"""Tests of kcv.layers._checks, the argument checks shared by the kcv layers and models."""

import keras
import pytest

from kcv.layers import _checks


@pytest.mark.parametrize("value", [1, 7])
def test_check_positive_int_returns_the_value(value):
    assert _checks.check_positive_int("filters", value) == value


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "3", None])
def test_check_positive_int_names_the_argument(value):
    with pytest.raises(ValueError, match=rf"`depth` must be a positive integer. "
                                         rf"Received: depth={value!r}"):
        _checks.check_positive_int("depth", value)


@pytest.mark.parametrize("value, pair", [(3, (3, 3)), ((1, 2), (1, 2)), ([2, 5], (2, 5))])
def test_check_int_or_pair_returns_a_tuple(value, pair):
    assert _checks.check_int_or_pair("kernel_size", value) == pair


@pytest.mark.parametrize("value", [0, (1,), (1, 2, 3), (2, 0), (2.0, 2), (True, 1), "33", None])
def test_check_int_or_pair_names_the_argument(value):
    with pytest.raises(ValueError, match=r"`strides` must be a positive integer or a pair of "
                                         r"positive integers. Received: strides="):
        _checks.check_int_or_pair("strides", value)


@pytest.mark.parametrize("rates", [(), [1, 0], (1, True), "12", 6])
def test_check_rates(rates):
    with pytest.raises(ValueError, match=r"`rates` must be a non-empty sequence"):
        _checks.check_rates(rates)


def test_norms_and_check_norm():
    assert _checks.NORMS == ("batch", "layer", "instance", "group", None)
    _checks.check_norm(None, 32)
    with pytest.raises(ValueError, match=r"`norm` must be one of .*Received: norm='bn'"):
        _checks.check_norm("bn", 32)
    with pytest.raises(ValueError, match=r"`norm_groups` must be a positive integer"):
        _checks.check_norm("group", 0)


def test_input_channels():
    assert _checks.input_channels((None, 4, 4, 3), "Block") == 3
    with pytest.raises(ValueError, match=r"Block expects NHWC inputs of rank 4. Received: "
                                         r"input_shape=\(4, 3\)"):
        _checks.input_channels((4, 3), "Block")
    with pytest.raises(ValueError, match=r"Block needs a known channel count"):
        _checks.input_channels((None, 4, 4, None), "Block")


def test_activation_check_and_serialization():
    _checks.check_activation(None)
    with pytest.raises(ValueError, match=r"`activation` must be .*Received: activation='nope'"):
        _checks.check_activation("nope")
    assert _checks.serialize_activation("relu") == "relu"
    assert _checks.serialize_activation(keras.activations.gelu) == "gelu"
    assert _checks.serialize_initializer("zeros")["class_name"] == "Zeros"
