"""Tests of kcv.layers.residual (the ResNet blocks) against NumPy forward passes written from
He et al. 2016a (original blocks) and 2016b (full pre-activation)."""

import json

import keras
import numpy as np
import pytest
from _numpy_conv import built_with_random_batch_norms, conv2d, conv_bn_act, inference_batch_norm

from kcv.layers import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck

from kcv_testing import check_layer


def _x(shape=(2, 9, 9, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("factory", [
    lambda: BasicBlock(6, strides=2),
    lambda: Bottleneck(2),
    lambda: PreActBasicBlock(6, strides=2),
    lambda: PreActBottleneck(2, strides=2),
], ids=["BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck"])
def test_check_layer(factory):
    check_layer(factory, _x((2, 8, 8, 4)))


def _residual_numpy(layer, x):
    """NumPy forward of the residual branch and shortcut of a kcv ResNet block."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    preact = isinstance(layer, (PreActBasicBlock, PreActBottleneck))
    h = relu(inference_batch_norm(x, layer.preact_norm)) if preact else x
    y = h
    for unit in layer.residual:
        y = conv_bn_act(y, unit)
    if layer.use_projection:
        shortcut = conv2d(h, np.asarray(layer.shortcut.conv.kernel), layer.shortcut.conv.strides[0])
        if not preact:
            shortcut = inference_batch_norm(shortcut, layer.shortcut.norm_layer)
    else:
        shortcut = x
    return y + shortcut if preact else relu(y + shortcut)


@pytest.mark.parametrize("cls, filters, strides, out_channels, projection", [
    (BasicBlock, 4, 1, 4, False), (BasicBlock, 6, 1, 6, True), (BasicBlock, 6, 2, 6, True),
    (Bottleneck, 1, 1, 4, False), (Bottleneck, 2, 2, 8, True),
    (PreActBasicBlock, 4, 1, 4, False), (PreActBasicBlock, 6, 2, 6, True),
    (PreActBottleneck, 1, 1, 4, False), (PreActBottleneck, 3, 2, 12, True),
])
def test_resnet_blocks_match_numpy(cls, filters, strides, out_channels, projection):
    x = _x()
    layer = built_with_random_batch_norms(cls(filters, strides=strides), x)
    got = np.asarray(layer(x, training=False))
    assert got.shape == (2, -(-9 // strides), -(-9 // strides), out_channels)
    assert layer.use_projection is projection
    kernels = [tuple(unit.conv.kernel.shape[:2]) for unit in layer.residual]
    assert kernels == ([(3, 3)] * 2 if "Basic" in cls.__name__ else [(1, 1), (3, 3), (1, 1)])
    strides_per_conv = [unit.conv.strides[0] for unit in layer.residual]
    assert strides_per_conv.index(strides) == 0 if "Basic" in cls.__name__ else 1
    np.testing.assert_allclose(got, _residual_numpy(layer, x), atol=1e-4)


def test_preact_block_last_conv_is_bare():
    layer = PreActBottleneck(2)
    layer(_x((1, 4, 4, 8)))
    last = layer.residual[-1]
    assert last.norm_layer is None and last.act is None
    assert layer.out_act is None  # nothing after the addition (full pre-activation)


def test_blocks_work_with_group_norm():
    y = BasicBlock(8, norm="group", norm_groups=4)(_x())
    assert y.shape == (2, 9, 9, 8)


def test_saved_configs_from_conv_blocks_still_load():
    # Models saved before the ResNet blocks moved out of kcv.layers.conv_blocks name that module
    # in their config; Keras resolves the class by its registered name "kcv>BasicBlock".
    config = keras.saving.serialize_keras_object(BasicBlock(6, strides=2, name="block"))
    assert config["registered_name"] == "kcv>BasicBlock"
    config = json.loads(json.dumps({**config, "module": "kcv.layers.conv_blocks"}))
    layer = keras.saving.deserialize_keras_object(config)
    assert type(layer) is BasicBlock and layer.get_config()["strides"] == 2


@pytest.mark.parametrize("make, match", [
    (lambda: BasicBlock(0), r"`filters` must be a positive integer. Received: filters=0"),
    (lambda: BasicBlock(4, norm_groups=0), r"`norm_groups` must be a positive integer"),
    (lambda: Bottleneck(4, strides=(2, 0)), r"`strides` must be a positive integer or a pair"),
    (lambda: PreActBottleneck(4, dilation_rate=0), r"`dilation_rate` must be a positive"),
    (lambda: PreActBasicBlock(4, norm="bn"), r"`norm` must be one of .*norm='bn'"),
])
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_errors():
    with pytest.raises(ValueError, match=r"BasicBlock expects NHWC inputs of rank 4"):
        BasicBlock(4).build((2, 9, 4))
    with pytest.raises(ValueError, match=r"`norm_groups` must divide .*norm_groups=4, channels=6"):
        BasicBlock(6, norm="group", norm_groups=4)(_x())
