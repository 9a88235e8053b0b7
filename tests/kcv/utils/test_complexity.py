"""count_params and count_macs against hand counts, published figures, and the same network
built from plain Keras layers."""

import keras
import pytest

from kcv.layers import ASPP, BasicBlock, ConvBNAct, InvertedResidual
from kcv.models import MobileNetV1, MobileNetV2, ResNet18
from kcv.utils import count_macs, count_params


def _tiny():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="block2_dw")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="valid", depth_multiplier=2, name="block2_sep")(x)
    x = keras.layers.Conv2D(8, 1, groups=2, name="head_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, name="head_dense")(x)
    return keras.Model(inputs, x)


def test_macs_of_a_tiny_model_by_hand():
    by_layer = count_macs(_tiny(), by_layer=True)
    assert by_layer == {
        "block1_conv": 8 * 8 * 4 * 3 * 3 * 3,  # H W C_out kh kw C_in = 6912
        "block2_dw": 4 * 4 * 4 * 3 * 3,  # stride 2 -> 4x4; per channel 3x3 = 576
        "block2_sep": 2 * 2 * 8 * 9 + 2 * 2 * 8 * 6,  # depthwise (4 ch x 2) + pointwise 8 -> 6
        "head_conv": 2 * 2 * 8 * 3,  # 2 groups: each output sees 6 / 2 = 3 inputs
        "head_dense": 8 * 5,
    }
    assert count_macs(_tiny()) == sum(by_layer.values())


def _kcv_blocks():
    inputs = keras.Input((16, 16, 3))
    x = ConvBNAct(8, 3, strides=2, name="stem")(inputs)
    x = InvertedResidual(8, expansion=2, name="inverted")(x)
    x = BasicBlock(8, name="basic")(x)
    x = ASPP(filters=4, rates=(2,), name="aspp")(x)
    return keras.Model(inputs, x)


def _plain_keras():
    """`_kcv_blocks` with Keras layers: the same convolutions, shapes and wiring."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    y = layers.Conv2D(16, 1, name="expand")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(y)
    x = layers.Add()([x, layers.Conv2D(8, 1, name="project")(y)])
    y = layers.Conv2D(8, 3, padding="same", name="basic1")(x)
    x = layers.Add()([x, layers.Conv2D(8, 3, padding="same", name="basic2")(y)])
    branches = [layers.Conv2D(4, 1, name="aspp_1x1")(x),
                layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="aspp_atrous")(x)]
    pooled = layers.GlobalAveragePooling2D(keepdims=True)(x)
    pooled = layers.Conv2D(4, 1, name="aspp_pool_conv")(pooled)
    branches.append(layers.UpSampling2D(8)(pooled))
    x = layers.Conv2D(4, 1, name="aspp_project")(layers.Concatenate()(branches))
    return keras.Model(inputs, x)


def test_macs_of_kcv_blocks_equal_the_plain_keras_network_and_the_hand_count():
    hand = {
        "stem": 8 * 8 * 8 * 3 * 3 * 3,  # 8x8 output, 8 filters, 3x3x3 kernel = 13824
        # expand 1x1 8->16, depthwise 3x3 on 16 channels, project 1x1 16->8, at 8x8
        "inverted": 64 * 16 * 8 + 64 * 16 * 9 + 64 * 8 * 16,  # 25600
        "basic": 2 * 64 * 8 * 9 * 8,  # two 3x3 8->8 convs (identity shortcut) = 73728
        # 1x1 8->4, 3x3 atrous 8->4, pooled 1x1 8->4 on a 1x1 map, projection 12->4
        "aspp": 64 * 4 * 8 + 64 * 4 * 9 * 8 + 4 * 8 + 64 * 4 * 12,  # 23584
    }
    assert count_macs(_kcv_blocks(), by_layer=True) == hand
    assert count_macs(_kcv_blocks()) == count_macs(_plain_keras()) == sum(hand.values())


def test_macs_of_a_nested_model_count_as_one_entry():
    inputs = keras.Input((16, 16, 3))
    inner = _kcv_blocks()
    outputs = keras.layers.Conv2D(2, 1, name="head")(inner(inputs))
    by_layer = count_macs(keras.Model(inputs, outputs), by_layer=True)
    assert by_layer == {inner.name: count_macs(inner), "head": 64 * 2 * 4}


def test_params_by_layer_block_and_total():
    model = _tiny()
    by_layer = count_params(model, by="layer")
    assert by_layer == {
        "block1_conv": 3 * 3 * 3 * 4 + 4,
        "block1_bn": 4 * 4,
        "block2_dw": 3 * 3 * 4 + 4,
        "block2_sep": 3 * 3 * 4 * 2 + 8 * 6 + 6,
        "head_conv": 3 * 8 + 8,
        "head_dense": 8 * 5 + 5,
    }
    assert count_params(model, by="block") == {
        "block1": by_layer["block1_conv"] + by_layer["block1_bn"],
        "block2": by_layer["block2_dw"] + by_layer["block2_sep"],
        "head": by_layer["head_conv"] + by_layer["head_dense"],
    }
    assert count_params(model, by="total") == model.count_params()
    # trainable only leaves out the 2 x 4 batch-norm moving statistics
    assert count_params(model, by="total", trainable_only=True) == model.count_params() - 8


def test_params_by_block_of_resnet18():
    blocks = count_params(ResNet18(), by="block", trainable_only=True)
    # conv2_block1: two 3x3x64x64 convs and two batch norms (gamma, beta).
    assert blocks["conv2_block1"] == 2 * (9 * 64 * 64 + 2 * 64)
    # conv3_block1: 3x3 64->128, 3x3 128->128, 1x1 projection 64->128, three batch norms.
    assert blocks["conv3_block1"] == 9 * 64 * 128 + 9 * 128 * 128 + 64 * 128 + 3 * 2 * 128
    assert sum(blocks.values()) == 11_689_512


@pytest.mark.parametrize("builder, published", [(MobileNetV1, 569e6), (MobileNetV2, 300e6)])
def test_macs_match_published_mult_adds(builder, published):
    # Howard et al. 2017, Table 8: 569M mult-adds; Sandler et al. 2018, Table 4: 300M.
    macs = count_macs(builder((224, 224, 3)))
    assert abs(macs - published) / published < 0.005


def test_errors():
    with pytest.raises(ValueError, match="by='blocks'"):
        count_params(_tiny(), by="blocks")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    with pytest.raises(ValueError, match="static shapes.*'c'"):
        count_macs(model)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, ConvBNAct(2, name="unit")(inputs))
    with pytest.raises(ValueError, match="static shapes.*'conv'"):  # the unit's convolution
        count_macs(model)
    with pytest.raises(ValueError, match="functional model"):
        count_macs(keras.layers.Dense(2))
