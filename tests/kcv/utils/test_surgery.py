"""kcv.utils.dilate: the atrous network against the original on its grid, the layer settings it
changes, kcv blocks, weights and errors."""

import keras
import numpy as np
import pytest

from kcv.layers import ConvBNAct
from kcv.utils import dilate


def _randomize(model, rng):
    """Random weights with healthy scales (keras.applications' fresh MobileNetV2 activations
    vanish at small inputs, which would make any comparison trivial)."""
    weights = []
    for v in model.weights:
        shape, path = tuple(v.shape), v.path
        if "variance" in path or "gamma" in path:
            w = rng.uniform(0.5, 1.5, shape)
        elif "beta" in path or "mean" in path or "bias" in path:
            w = rng.normal(0, 0.1, shape)
        else:
            fan_in = np.prod(shape[:2]) if "depthwise" in path else np.prod(shape[:-1])
            w = rng.normal(0, np.sqrt(2 / fan_in), shape)
        weights.append(w.astype("float32"))
    model.set_weights(weights)


@pytest.mark.parametrize("name, offset", [("mobilenet_v2", (1, 3)), ("resnet50", (0, 0))])
def test_atrous_network_equals_the_original_on_its_grid(name, offset):
    # The algorithme a trous: removing a stride and dilating what follows computes the original
    # network's outputs at every pixel, the originals sitting on a grid of the removed stride.
    # keras.applications' MobileNetV2 samples 3x3 stride-2 windows centred at 2i + 1 (offset 1,
    # 3 for two removed strides), ResNet50 strides in 1x1 convolutions at 2i (offset 0).
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    if name == "mobilenet_v2":
        net = keras.applications.MobileNetV2((64, 64, 3), alpha=0.35, include_top=False,
                                             weights=None)
    else:
        net = keras.applications.ResNet50(input_shape=(64, 64, 3), include_top=False,
                                          weights=None)
    _randomize(net, rng)
    reference = np.asarray(net(x))
    assert reference.shape[1:3] == (2, 2) and reference.std() > 0.1
    os16, os8 = np.asarray(dilate(net, 16)(x)), np.asarray(dilate(net, 8)(x))
    assert os16.shape[1:3] == (4, 4) and os8.shape[1:3] == (8, 8)
    atol = 1e-5 * np.abs(reference).max()  # float32 sums in another order (ResNet grows large)
    np.testing.assert_allclose(os16[:, offset[0]::2, offset[0]::2], reference, atol=atol)
    np.testing.assert_allclose(os8[:, offset[1]::4, offset[1]::4], reference, atol=atol)
    assert np.abs(os16[:, 1 - offset[0]::2, 1 - offset[0]::2] - reference).max() > 1e-2 * np.abs(
        reference).max()


def _chain(layers, shape=(16, 16, 2)):
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="chain")


def test_strides_dilations_and_padding_by_hand():
    # Strides 2, 2, 2 then a 3x3: at output stride 4 the third stride goes (the layer keeps
    # rate 1, the next gets rate 2); the valid padding of the stride-less layer becomes same
    # and the zero padding in front of it is emptied.
    model = _chain([
        keras.layers.Conv2D(2, 3, strides=2, padding="same", name="s1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.MaxPooling2D(2, name="s2"),
        keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad"),
        keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", name="s3"),
        keras.layers.Conv2D(2, 3, padding="same", name="after"),
    ])
    atrous = dilate(model, 4, bn_momentum=0.5)
    assert atrous.name == "chain" and atrous.output.shape == (None, 4, 4, 2)
    assert atrous.get_layer("s1").strides == (2, 2)
    assert atrous.get_layer("s2").strides == (2, 2)
    s3 = atrous.get_layer("s3")
    assert s3.strides == (1, 1) and s3.dilation_rate == (1, 1) and s3.padding == "same"
    assert atrous.get_layer("pad").padding == ((0, 0), (0, 0))
    assert atrous.get_layer("after").dilation_rate == (2, 2)
    assert atrous.get_layer("bn").momentum == 0.5 and model.get_layer("bn").momentum == 0.99
    for ours, theirs in zip(atrous.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_kcv_blocks_are_dilated():
    model = _chain([ConvBNAct(4, 3, strides=2, name="a"), ConvBNAct(4, 3, strides=2, name="b"),
                    ConvBNAct(4, 3, name="c")])
    atrous = dilate(model, 2)
    assert atrous.get_layer("b").strides == 1 and list(atrous.get_layer("c").dilation_rate) == [2, 2]
    assert atrous.output.shape == (None, 8, 8, 4)
    x = np.random.default_rng(0).random((1, 16, 16, 2)).astype("float32")
    # TF's "same" padding of a stride-2 3x3 on an even map pads after the data: the original
    # windows are centred at 2i + 1, so the original outputs sit at the odd positions.
    np.testing.assert_allclose(np.asarray(atrous(x))[:, 1::2, 1::2], np.asarray(model(x)),
                               atol=1e-5)


@pytest.mark.parametrize("output_stride", [0, 6, 2.0])
def test_output_stride_errors(output_stride):
    model = _chain([keras.layers.Conv2D(2, 3, strides=2)])
    with pytest.raises(ValueError, match=f"output_stride={output_stride!r}"):
        dilate(model, output_stride)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional"):
        dilate(Net(), 8)
