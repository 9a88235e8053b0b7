"""UNet++: the paper's parameter counts, nested node structure, deep-supervision heads, pruning,
the shared layer routine and training on synthetic shapes."""

import keras
import numpy as np
import pytest

from kcv.data.synthetic import make_shapes
from kcv.losses import BCEDiceLoss
from kcv.models import UNet, UNetPlusPlus, prune

from kcv_testing import check_layer


def hand_count_params(in_ch, classes, filters, depth, norm, heads):
    """Parameters from the definition: X(i,0) takes the level above, X(i,j) takes j nodes of
    its level plus a 2x2 up-convolution of X(i+1,j-1); each node two 3x3 convs; 1x1 heads."""
    bias = norm is None
    norm_params = {"batch": 4, "group": 2, None: 0}[norm]

    def conv(cin, cout, k):
        return k * k * cin * cout + (cout if bias else 0) + norm_params * cout

    f = [filters * 2**i for i in range(depth + 1)]
    total = 0
    for i in range(depth + 1):
        total += conv(in_ch if i == 0 else f[i - 1], f[i], 3) + conv(f[i], f[i], 3)
    for j in range(1, depth + 1):
        for i in range(depth + 1 - j):
            total += 4 * f[i + 1] * f[i] + f[i]  # transposed conv with bias
            total += conv((j + 1) * f[i], f[i], 3) + conv(f[i], f[i], 3)
    return total + heads * (f[0] * classes + classes)


def test_paper_parameter_counts():
    # Zhou et al. 2018, Table 1 (filters 32..512, no normalization, one sigmoid output):
    # U-Net 7.76M, UNet++ 9.04M with and without deep supervision; Fig. 4: pruned UNet++
    # L1 0.1M, L2 0.5M, L3 2.2M, L4 9.0M.
    full = UNetPlusPlus((96, 96, 1), 1, filters=32, depth=4, norm=None)
    assert round(UNet((96, 96, 1), 1, filters=32, depth=4, norm=None).count_params() / 1e6,
                 2) == 7.76
    assert round(full.count_params() / 1e6, 2) == 9.04
    no_ds = UNetPlusPlus((96, 96, 1), 1, filters=32, depth=4, deep_supervision=False, norm=None)
    assert round(no_ds.count_params() / 1e6, 2) == 9.04
    pruned = [round(prune(full, level).count_params() / 1e6, 1) for level in (1, 2, 3, 4)]
    assert pruned == [0.1, 0.5, 2.2, 9.0]
    assert full.count_params() == hand_count_params(1, 1, 32, 4, None, heads=4)


@pytest.mark.parametrize("depth, deep_supervision, norm", [(2, True, "batch"), (3, False, "group"),
                                                          (3, True, None)])
def test_nodes_heads_and_hand_counted_parameters(depth, deep_supervision, norm):
    model = UNetPlusPlus((32, 32, 3), 3, filters=4, depth=depth,
                         deep_supervision=deep_supervision, norm=norm)
    nodes = {layer.name[:-6] for layer in model.layers if layer.name.endswith("_conv1")}
    assert nodes == {f"x{i}{j}" for i in range(depth + 1) for j in range(depth + 1 - i)}
    assert len(nodes) == (depth + 1) * (depth + 2) // 2
    heads = depth if deep_supervision else 1
    assert model.count_params() == hand_count_params(3, 3, 4, depth, norm, heads)
    outputs = model(np.random.rand(2, 32, 32, 3).astype("float32"))
    outputs = outputs if deep_supervision else [outputs]
    assert len(outputs) == heads and all(o.shape == (2, 32, 32, 3) for o in outputs)
    np.testing.assert_allclose(np.asarray(outputs[-1]).sum(-1), 1.0, rtol=1e-5)
    assert [layer.name for layer in model.layers if layer.name.startswith("level")] == [
        f"level{j}" for j in range(depth - heads + 1, depth + 1)]


def test_nested_skip_connects_every_earlier_node_of_the_level():
    model = UNetPlusPlus((16, 16, 3), 2, filters=4, depth=3, norm=None)
    concat = model.get_layer("x03_concat")
    sources = {t._keras_history.operation.name for t in concat.input}
    assert sources == {"x00_conv2", "x01_conv2", "x02_conv2", "x03_upconv"}
    assert model.get_layer("x03_upconv").input._keras_history.operation.name == "x12_conv2"


def test_prune_equals_the_full_models_head_and_a_shallower_unet_plus_plus(tmp_path):
    model = UNetPlusPlus((32, 32, 3), 2, filters=4, depth=3, norm="batch")
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    # BN statistics off their initial values, so that the comparison is not trivial.
    rng = np.random.default_rng(1)
    for v in model.weights:
        if "moving_" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    full = [np.asarray(o) for o in model(x, training=False)]
    for level in (1, 2, 3):
        fast = prune(model, level)
        np.testing.assert_array_equal(np.asarray(fast(x, training=False)), full[level - 1])
        shallow = UNetPlusPlus((32, 32, 3), 2, filters=4, depth=level, deep_supervision=False)
        assert fast.count_params() == shallow.count_params()
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(prune(reloaded, 2)(x, training=False)), full[1],
                               atol=1e-6)


def test_shared_layer_routine():
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    check_layer(lambda: UNetPlusPlus((16, 16, 3), 3, filters=4, depth=2, norm="group"), x)


def test_bilinear_upsampling_converts_to_builtins_and_prunes():
    from kcv_testing import check_tflite

    model = UNetPlusPlus((16, 16, 1), 1, filters=4, depth=2, upsampling="bilinear")
    x = np.random.default_rng(1).random((1, 16, 16, 1)).astype("float32")
    check_tflite(prune(model, 1), [x])


def test_trains_with_deep_supervision_on_mean_of_bce_dice():
    keras.utils.set_random_seed(0)
    x, y = make_shapes(48, 32, seed=0)
    binary = (y > 0).astype("float32")[..., None]
    model = UNetPlusPlus((32, 32, 3), 1, filters=4, depth=2)
    model.compile(keras.optimizers.Adam(1e-2), loss=[BCEDiceLoss()] * 2, loss_weights=[0.5] * 2)
    hist = model.fit(x, [binary] * 2, epochs=4, batch_size=16, verbose=0).history["loss"]
    assert hist[-1] < 0.8 * hist[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (24, 32, 3)}, r"divisible by 2\*\*depth = 16.*input_shape=\(24, 32, 3\)"),
        ({"norm": "weight"}, "norm"),
        ({"upsampling": "nearest"}, "upsampling"),
        ({"depth": 0}, "depth"),
        ({"filters": 0}, "filters"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (32, 32)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (32, 32, 3), "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        UNetPlusPlus(**args)


def test_logits_heads_keep_their_level_names():
    model = UNetPlusPlus((16, 16, 3), 2, filters=4, depth=2, output_activation=None)
    assert [model.get_layer(f"level{j}").activation.__name__ for j in (1, 2)] == ["linear"] * 2
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    heads = model(x)
    assert len(heads) == 2 and heads[0].shape == (1, 16, 16, 2)


def test_prune_errors():
    model = UNetPlusPlus((16, 16, 3), 2, filters=4, depth=2)
    with pytest.raises(ValueError, match=r"level.*\[1, 2\].*level=3"):
        prune(model, 3)
    with pytest.raises(ValueError, match="UNetPlusPlus"):
        prune(UNet((16, 16, 3), 2, filters=4, depth=2), 1)
    no_ds = UNetPlusPlus((16, 16, 3), 2, filters=4, depth=2, deep_supervision=False)
    with pytest.raises(ValueError, match=r"\[2\]"):
        prune(no_ds, 1)
