"""DeepLabV3/V3+: the atrous backbone against the original keras.applications network, output
stride and ASPP rates, the V3+ decoder, the shared layer routine and training."""

import keras
import numpy as np
import pytest

from kcv.data.synthetic import make_shapes
from kcv.models import DeepLabV3
from kcv.models.segmentation.deeplab import dilate

from kcv_testing import check_layer


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
def test_atrous_backbone_equals_the_original_on_its_grid(name, offset):
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


def _rates(model, names):
    backbone = model.get_layer("backbone")
    return [backbone.get_layer(n).dilation_rate[0] for n in names]


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36)),
                                                  (32, (3, 6, 9))])
def test_output_stride_and_aspp_rates(output_stride, rates):
    model = DeepLabV3((64, 64, 3), 3, alpha=0.35, filters=8, output_stride=output_stride)
    aspp = model.get_layer("aspp")
    assert tuple(aspp.rates) == rates
    assert tuple(aspp.input.shape[1:3]) == (64 // output_stride,) * 2
    assert model.get_layer("upsample").size == (output_stride, output_stride)
    names = ["block_6_depthwise", "block_7_depthwise", "block_13_depthwise",
             "block_14_depthwise", "block_16_depthwise"]
    expected = {16: [1, 1, 1, 2, 2], 8: [1, 2, 2, 4, 4], 32: [1, 1, 1, 1, 1]}[output_stride]
    assert _rates(model, names) == expected
    out = model(np.random.rand(1, 64, 64, 3).astype("float32"))
    assert out.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-5)


def test_resnet50_backbone_dilates_the_last_stages():
    # keras.applications' ResNet50 strides in the first 1x1 conv of a stage, so the stage's
    # 3x3 convolutions all come after the removed stride and get the new rate.
    model = DeepLabV3((64, 64, 3), 2, backbone="resnet50", filters=8, output_stride=8)
    assert _rates(model, ["conv3_block4_2_conv", "conv4_block1_2_conv", "conv4_block6_2_conv",
                          "conv5_block1_2_conv", "conv5_block3_2_conv"]) == [1, 2, 2, 4, 4]
    assert tuple(model.get_layer("aspp").input.shape[1:]) == (8, 8, 2048)


def test_deeplab_v3_plus_decoder_uses_stride_4_features():
    model = DeepLabV3((64, 64, 3), 2, alpha=0.35, filters=8, decoder=True, decoder_filters=6,
                      backbone_bn_momentum=0.9)
    backbone_bns = [layer for layer in model.get_layer("backbone").layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
    assert backbone_bns and all(layer.momentum == 0.9 for layer in backbone_bns)
    assert tuple(model.get_layer("decoder_up").output.shape[1:]) == (16, 16, 8)
    assert tuple(model.get_layer("decoder_reduce_conv").output.shape[1:]) == (16, 16, 6)
    assert model.get_layer("upsample").size == (4, 4)
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 2)


def test_shared_layer_routine():
    # train=False: the routine's mixed-precision check takes ONE training step, and on this deep
    # network the LossScaleOptimizer's first step overflows at its initial scale 2**15 and is
    # skipped by design (weights unchanged). The mixed-precision forward pass is still checked
    # here; `test_trains_on_synthetic_shapes_under_mixed_precision` checks training under
    # mixed_float16 over several steps.
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    check_layer(lambda: DeepLabV3((32, 32, 3), 3, alpha=0.35, filters=8, rates=(1, 2, 3),
                                  decoder=True, decoder_filters=4), x, train=False)


@pytest.mark.slow
def test_trains_on_synthetic_shapes_under_mixed_precision():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")  # conftest restores float32
    x, y = make_shapes(32, 32, seed=0)
    # Small rates for the 2x2 ASPP input: TF runs a 3x3 conv of rate r on CPU by padding the map
    # to a multiple of r (space_to_batch), so rate 18 on a 2x2 map costs ~80x a rate-1 conv.
    model = DeepLabV3((32, 32, 3), 4, alpha=0.35, filters=16, rates=(1, 2, 3), output_stride=16)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  jit_compile=False)  # XLA compilation of this graph costs more than it saves
    hist = model.fit(x, y, epochs=3, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist))
    assert hist[-1] < 0.8 * hist[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (48, 64, 3)}, r"divisible by 32.*input_shape=\(48, 64, 3\)"),
        ({"backbone": "vgg16"}, "backbone"),
        ({"output_stride": 4}, "output_stride"),
        ({"rates": (6, 0)}, "rates"),
        ({"output_stride": 32, "rates": (3, 6)}, "rates"),
        ({"filters": 0}, "filters"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (64, 64, 3), "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        DeepLabV3(**args)
