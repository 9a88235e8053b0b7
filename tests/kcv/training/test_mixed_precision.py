"""kcv models train under mixed_float16 with plain `model.fit`: Keras wraps the optimizer in a
LossScaleOptimizer, variables stay float32, the loss is finite and the weights move (after the
first steps, which dynamic loss scaling may skip); segmentation models return float32.

One model trains here (UNet). Every model's one-step mixed-precision training is already part
of the shared routine (`check_layer`, tests/kcv/models) and DeepLabV3 trains under
mixed_float16 in tests/kcv/models/test_deeplab.py; the other models only build and run here.
"""

import keras
import numpy as np
import pytest

import kcv.models

SEG = dict(input_shape=(32, 32, 3), num_classes=3)
SMALL = {
    "UNet": dict(SEG, filters=4, depth=2),
    "UNetPlusPlus": dict(SEG, filters=4, depth=2, deep_supervision=False),
    "DeepLabV3": dict(SEG, alpha=0.35, filters=16, rates=(2, 3, 4)),
    "HRNet": dict(SEG, width=8, num_modules=(1, 1, 1, 1), num_blocks=1),
}


def test_trains_under_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = kcv.models.UNet(**SMALL["UNet"])
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=(12, 32, 32)).astype(np.int32)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.trainable_weights]
    # 18 steps: dynamic loss scaling starts at 2**15 and skips (halving the scale) every step
    # whose float16 gradients overflow.
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["loss"]).all()
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    moved = [not np.array_equal(a, np.array(b)) for a, b in zip(before, model.trainable_weights)]
    assert sum(moved) > 0.9 * len(moved)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_segmentation_models_keep_float32_variables_and_outputs(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = getattr(kcv.models, name)(**SMALL[name])
    assert all(w.dtype == "float32" for w in model.weights)
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype(np.float32)
    assert model(x).dtype == "float32"
