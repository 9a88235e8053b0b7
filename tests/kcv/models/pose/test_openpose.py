"""OpenPose: the paper's wiring (VGG-19's first 10 layers, stage inputs, one output per stage
and branch), the shared layer routine on tiny configurations of both backbones, and the argument
errors (training: tests/examples/test_pose_example.py)."""

import keras
import numpy as np
import pytest

from kcv.models import OpenPose

from kcv_testing import check_layer

LIMBS = [(0, 1), (1, 2)]
TINY = {"stages": 2, "alpha": 0.125, "stage_filters": 8, "refinement_kernel": 3}


def test_vgg19_first_ten_layers_and_stage_wiring():
    model = OpenPose((64, 96, 3), 3, LIMBS, stages=3)
    convs = [layer for layer in model.layers if layer.name.startswith("block")
             and isinstance(layer, keras.layers.Conv2D)]
    # Simonyan & Zisserman's VGG-19 up to conv4_2: 64, 64, 128, 128, 256 x4, 512, 512.
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 256, 256, 512, 512]
    keras_vgg = keras.applications.VGG19(weights=None, include_top=False, input_shape=(64, 96, 3))
    for conv in convs:  # same names and kernel shapes as keras.applications
        assert conv.kernel.shape == keras_vgg.get_layer(conv.name).kernel.shape
    assert sorted(model.output) == [f"stage{t}_{k}" for t in (1, 2, 3) for k in ("heatmaps",
                                                                                  "pafs")]
    assert model.output["stage3_heatmaps"].shape[1:] == (8, 12, 3)
    assert model.output["stage3_pafs"].shape[1:] == (8, 12, 4)
    concat = model.get_layer("stage3_concat")
    sources = [t._keras_history.operation.name for t in concat.input]
    assert sources == ["cpm_conv2", "stage2_heatmaps", "stage2_pafs"]
    assert model.get_layer("stage2_pafs_conv5").kernel_size == (7, 7)
    assert "stage2_pafs_conv6" in [layer.name for layer in model.layers]
    assert model.get_layer("stage1_heatmaps_conv4").filters == 512


def test_shared_layer_routine_vgg19():
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    check_layer(lambda: OpenPose((16, 16, 3), 3, LIMBS, **TINY), x)


@pytest.mark.slow
def test_shared_layer_routine_mobilenet_v2():
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    # train=False: the batch-normalised backbone's first gradients exceed 2 (6.4 at most in
    # float32), which overflows float16 at Keras' initial loss scale 2**15, so the
    # LossScaleOptimizer skips the single step the routine takes (and halves the scale), as
    # designed; the forward pass under mixed_float16 is still compared.
    check_layer(lambda: OpenPose((32, 32, 3), 3, LIMBS, backbone="mobilenet_v2", **TINY), x,
                train=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (60, 64, 3)}, r"divisible by 8.*\(60, 64, 3\)"),
        ({"input_shape": (64, 48, 3), "backbone": "mobilenet_v2"}, "divisible by 32"),
        ({"backbone": "resnet"}, "backbone='resnet'"),
        ({"limbs": [(0, 3)]}, "limbs"),
        ({"stages": 0}, "stages=0"),
        ({"alpha": 0}, "alpha=0"),
        ({"num_keypoints": 0}, "num_keypoints"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (64, 64, 3), "num_keypoints": 3, "limbs": LIMBS, **kwargs}
    with pytest.raises(ValueError, match=match):
        OpenPose(**args)
