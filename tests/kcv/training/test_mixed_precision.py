"""kcv models train under mixed_float16 with plain `model.fit`: Keras wraps the optimizer in a
LossScaleOptimizer, variables stay float32, the loss is finite and the weights move (after the
first steps, which dynamic loss scaling may skip); segmentation models return float32.
Covered: the segmentation models and one builder per backbone family (ResNet18 stands for
the ResNet builders, which share their code)."""


import keras
import numpy as np
import pytest

import kcv.models

SEG = dict(input_shape=(32, 32, 3), num_classes=3)
CLS = dict(input_shape=(32, 32, 3), classes=3, weights=None)
SMALL = {
    "UNet": dict(SEG, filters=4, depth=2),
    "UNetPlusPlus": dict(SEG, filters=4, depth=2, deep_supervision=False),
    "DeepLabV3": dict(SEG, alpha=0.35, filters=16, rates=(2, 3, 4)),
    "HRNet": dict(SEG, width=8, num_modules=(1, 1, 1, 1), num_blocks=1),
    "MobileNetV1": dict(CLS, alpha=0.25),
    "ResNet18": dict(CLS),
}
SLOW = {"DeepLabV3", "HRNet", "ResNet18"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(SMALL)])
def test_trains_under_mixed_float16(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = getattr(kcv.models, name)(**SMALL[name])
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 32, 32, 3)).astype(np.float32)
    segmentation = "num_classes" in SMALL[name]
    y = rng.integers(0, 3, size=(12, 32, 32) if segmentation else (12,)).astype(np.int32)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.trainable_weights]
    # 18 steps: dynamic loss scaling starts at 2**15 and skips (halving the scale) every step
    # whose float16 gradients overflow; the backbones need ~13 such steps at this size.
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations) > 0  # steps actually applied
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    if segmentation:
        assert model(x[:1]).dtype == "float32"
    moved = [not np.array_equal(a, np.array(b)) for a, b in zip(before, model.trainable_weights)]
    assert sum(moved) > 0.9 * len(moved)
