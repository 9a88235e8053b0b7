"""The quantization debugger report (`export.quantization_debug.layer_errors`) and keeping the
tensors it names in float (`keep_float` with tensor names)."""

import keras
import numpy as np
import pytest

import export
from export._litert import interpreter
from export.quantization_debug import layer_errors


def _data(n, seed=0):
    return [np.random.default_rng(seed + i).random((1, 8, 8, 3), "float32") for i in range(n)]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="second")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def rows(model):
    return layer_errors(model, _data(8))


def test_errors_are_in_quantization_steps_and_sorted(rows):
    assert [r["rmse_over_scale"] for r in rows] == sorted((r["rmse_over_scale"] for r in rows),
                                                          reverse=True)
    assert {r["op"] for r in rows} >= {"CONV_2D"}
    # rounding to the nearest step alone gives an RMSE of 1/sqrt(12) = 0.29 steps (a uniform
    # error on [-1/2, 1/2]); each op's own error (int8 weights, its input de-quantized) is of
    # that order, not an error accumulated over the model
    for r in rows:
        assert 0.1 < r["rmse_over_scale"] < 1.5, r


def test_keep_float_takes_tensor_names(model, rows):
    conv = [r["tensor"] for r in rows if r["op"] == "CONV_2D"]
    assert len(conv) == 2
    kept = conv[0]
    content = export.convert_to_tflite(model, quantization="int8", representative_data=_data(8),
                                       keep_float=[kept])
    dtypes = {t["name"]: t["dtype"] for t in interpreter(content).get_tensor_details()}
    assert dtypes[kept] == np.float32
    assert dtypes[conv[1]] == np.int8
    x = _data(2, seed=50)
    batch = np.concatenate(x)
    want = np.asarray(model(batch))
    got = export.run_tflite(content, batch)[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
