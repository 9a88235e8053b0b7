"""Vision Transformer: the published ViT-B/16 size, the shared routine, attention maps, resizing."""

import keras
import numpy as np
import pytest

from kcv.models import VisionTransformer
from kcv.models.vit import attention_maps, resize_vision_transformer

from kcv_testing import check_layer

_TINY = dict(patch_size=4, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32)


def _images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


def test_vit_b16_parameter_count():
    # torchvision's vit_b_16 model card: num_params 86567656 (224x224, 1000 classes).
    model = VisionTransformer((224, 224, 3), 1000)
    assert model.count_params() == 86_567_656
    assert model.output_shape == (None, 1000)


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_check_layer(pooling):
    # train=False: the routine's single step starts at Keras' initial loss scale 2**15, where
    # this model's float16 gradients overflow and LossScaleOptimizer skips the step (by design);
    # test_mixed_precision_trains shows the scale settling and the weights moving.
    check_layer(lambda: VisionTransformer((16, 16, 3), 5, pooling=pooling, **_TINY), _images(),
                xla_atol=1e-4, train=False)


def test_mixed_precision_trains():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = VisionTransformer((16, 16, 3), 5, **_TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(_images(8), np.arange(8) % 5, epochs=6, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = [not np.array_equal(b, np.array(a)) for b, a in zip(before,
                                                                  model.trainable_weights)]
    assert all(changed)


def test_gap_has_no_class_token():
    token = VisionTransformer((16, 16, 3), 5, **_TINY)
    gap = VisionTransformer((16, 16, 3), 5, pooling="gap", **_TINY)
    assert token.count_params() - gap.count_params() == 16 + 16  # class token + its position


def test_attention_maps():
    model = VisionTransformer((16, 16, 3), 5, **_TINY)
    maps = attention_maps(model, _images())
    assert [m.shape for m in maps] == [(2, 2, 17, 17)] * 2  # 16 patches + class token
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)


def test_resize_keeps_weights_and_interpolates_positions():
    model = VisionTransformer((16, 16, 3), 5, **_TINY)
    same = resize_vision_transformer(model, (16, 16, 3))
    np.testing.assert_allclose(np.asarray(same(_images())), np.asarray(model(_images())),
                               atol=1e-5)
    bigger = resize_vision_transformer(model, (24, 24, 3))
    table = np.asarray(bigger.get_layer("position_embedding").embedding)
    assert table.shape == (1, 1 + 36, 16)
    np.testing.assert_array_equal(table[0, 0],
                                  np.asarray(model.get_layer("position_embedding").embedding)[0, 0])
    assert bigger(_images(size=24)).shape == (2, 5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_shape=(None, 16, 3)), "static"),
    (dict(pooling="max"), "pooling='max'"),
    (dict(num_layers=0), "num_layers=0"),
    (dict(input_shape=(18, 16, 3)), "multiples of `patch_size`=4"),
])
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (16, 16, 3), **_TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        VisionTransformer(num_classes=5, **args)
