"""DeepLabV3/V3+: output stride and ASPP rates, the dilated kcv backbones, backbone weights
files, dropout after the last batch norm, the V3+ decoder, the shared layer routine and
training. (`kcv.utils.dilate` itself: tests/kcv/utils/test_surgery.py.)"""

import keras
import numpy as np
import pytest
from model_graph import dropouts_reaching_batch_norm

from kcv.data.synthetic import make_shapes
from kcv.models import DeepLabV3

from kcv_testing import check_layer


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
    assert tuple(model.get_layer("decoder_reduce").output.shape[1:]) == (16, 16, 6)
    assert model.get_layer("upsample").size == (4, 4)
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 2)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_backbone_weights_load_a_keras_applications_weights_file(tmp_path, backbone):
    # A weights file written by keras.applications (random weights, include_top=False) loads
    # into the (dilated) DeepLab backbone: every backbone weight is the file's.
    size = (64, 64, 3)
    if backbone == "mobilenet_v2":
        theirs = keras.applications.MobileNetV2(size, alpha=0.35, include_top=False,
                                                weights=None)
    else:
        theirs = keras.applications.ResNet50(input_shape=size, include_top=False, weights=None)
    rng = np.random.default_rng(0)
    theirs.set_weights([rng.normal(0, 0.1, w.shape).astype("float32")
                        for w in theirs.get_weights()])
    path = str(tmp_path / f"{backbone}.weights.h5")
    theirs.save_weights(path)
    model = DeepLabV3(size, 2, backbone=backbone, alpha=0.35, filters=8, rates=(1, 2, 3),
                      backbone_weights=path)
    ours = model.get_layer("backbone")
    assert len(ours.weights) == len(theirs.weights)
    for a, b in zip(ours.weights, theirs.weights):
        assert a.path.split("/")[-2:] == b.path.split("/")[-2:]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("weights", ["imagenet", "missing.h5"])
def test_backbone_weights_must_be_a_local_file(weights):
    with pytest.raises(ValueError, match=f"downloads nothing.*backbone_weights='{weights}'"):
        DeepLabV3((64, 64, 3), 2, backbone_weights=weights)


@pytest.mark.parametrize("decoder", [False, True])
def test_dropout_does_not_feed_a_batch_norm(decoder):
    # Li et al. (CVPR 2019): dropout ahead of a batch norm shifts the variance the norm sees
    # between training and inference; DeepLab drops out right before the classifier.
    model = DeepLabV3((64, 64, 3), 2, alpha=0.35, filters=8, rates=(1, 2, 3), decoder=decoder,
                      dropout=0.1)
    assert dropouts_reaching_batch_norm(model) == {}
    dropout = model.get_layer("dropout")
    assert dropout.rate == 0.1 and model.get_layer("aspp").dropout == 0.0
    assert dropout.output is model.get_layer("classifier").input


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
    # Eagerly: the same train_step (LossScaleOptimizer, float16 compute, loss scaling) without
    # tracing and optimising the whole graph, which cost more than the 12 steps (54 -> 34 CPU-s
    # of fit, the loss falling as far). `fit` of a traced graph under mixed_float16 is
    # tests/kcv/training/test_mixed_precision.py::test_trains_under_mixed_float16; DeepLabV3's
    # traced training is tests/kcv/training/test_distributed.py (MirroredStrategy).
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  run_eagerly=True)
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
