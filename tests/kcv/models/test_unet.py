"""U-Net: architecture by hand-counted parameters, shapes, where dropout goes, the shared layer
routine, training."""

import keras
import numpy as np
import pytest
from model_graph import dropouts_reaching_batch_norm

import kcv
from kcv.data.synthetic import make_shapes
from kcv.models import UNet

from kcv_testing import check_layer


def hand_count_params(in_ch, classes, filters, depth, norm):
    """Parameters of the U-Net counted from its definition (3x3 convs, 2x2 up-convs, 1x1 head)."""
    bias = norm is None
    norm_params = {"batch": 4, "group": 2, "instance": 2, "layer": 2, None: 0}[norm]  # per channel

    def conv(cin, cout, k):
        return k * k * cin * cout + (cout if bias else 0) + norm_params * cout

    total, cin = 0, in_ch
    for level in range(depth + 1):  # encoder levels and bottleneck
        f = filters * 2**level
        total += conv(cin, f, 3) + conv(f, f, 3)
        cin = f
    for level in reversed(range(depth)):
        f = filters * 2**level
        total += 2 * 2 * cin * f + f  # transposed conv with bias
        total += conv(2 * f, f, 3) + conv(f, f, 3)
        cin = f
    return total + cin * classes + classes


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer", None])
def test_parameter_count_matches_the_definition(norm):
    model = UNet((32, 32, 3), 4, filters=8, depth=3, norm=norm)
    assert model.count_params() == hand_count_params(3, 4, 8, 3, norm)


def test_paper_configuration_parameter_count():
    # The paper's network (1 input channel, 2 classes, 64 filters, 4 downsamplings) without
    # normalization: about 31.0 million parameters, the size usually reported for U-Net.
    model = UNet((64, 64, 1), 2, filters=64, depth=4, norm=None)
    assert model.count_params() == hand_count_params(1, 2, 64, 4, None) == 31_030_658


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("num_classes, act_sum", [(3, True), (1, False)])
def test_output_shape_and_activation(upsampling, num_classes, act_sum):
    model = UNet((32, 48, 2), num_classes, filters=4, depth=2, upsampling=upsampling)
    out = np.asarray(model(np.random.rand(2, 32, 48, 2).astype("float32")))
    assert out.shape == (2, 32, 48, num_classes)
    if act_sum:
        np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    else:
        assert out.min() >= 0 and out.max() <= 1


def test_logits_output():
    model = UNet((16, 16, 3), 2, filters=4, depth=2, output_activation=None)
    assert model.layers[-1].name == "logits"


def test_dropout_follows_the_last_batch_norm():
    # Li et al. (CVPR 2019): no dropout ahead of a batch norm; one dropout, feeding the
    # classifier. The check itself fails on the arrangement the paper warns about.
    model = UNet((16, 16, 3), 2, filters=4, depth=2, dropout=0.3)
    assert dropouts_reaching_batch_norm(model) == {}
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.name for d in dropouts] == ["dropout"] and dropouts[0].rate == 0.3
    assert model.get_layer("classifier").input is dropouts[0].output
    assert not any(isinstance(layer, keras.layers.Dropout)
                   for layer in UNet((16, 16, 3), 2, filters=4, depth=2).layers)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dropout(0.5, name="early")(inputs)
    x = kcv.layers.ConvBNAct(4, name="unit")(keras.layers.Conv2D(4, 1, name="mix")(x))
    assert dropouts_reaching_batch_norm(keras.Model(inputs, x)) == {"early": ["unit"]}


def test_shared_layer_routine():
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    check_layer(lambda: UNet((16, 16, 3), 3, filters=4, depth=2, norm="group", dropout=0.1), x)


def test_trains_on_synthetic_shapes():
    keras.utils.set_random_seed(0)
    x, y = make_shapes(64, 32, seed=0)
    model = UNet((32, 32, 3), 4, filters=8, depth=2)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    hist = model.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]
    assert hist[-1] < 0.75 * hist[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (30, 32, 3)}, r"divisible by 2\*\*depth = 16.*input_shape=\(30, 32, 3\)"),
        ({"norm": "weight"}, "norm"),
        ({"upsampling": "nearest"}, "upsampling"),
        ({"depth": 0}, "depth"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (32, 32)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (32, 32, 3), "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        UNet(**args)
