"""HRNetV2: the paper's parameter counts, branch resolutions, the fusion rule's wiring, the
shared layer routine and training on synthetic shapes."""

import keras
import numpy as np
import pytest

import kcv
from kcv.data.synthetic import make_shapes
from kcv.models import HRNet

from kcv_testing import check_layer

SMALL = {"width": 4, "num_modules": (1, 1, 1, 1), "num_blocks": 1, "stem_filters": 8}


def test_paper_parameter_count():
    # Sun et al. 2019 (HRNetV2, arXiv:1904.04514), Cityscapes: HRNetV2-W48 has 65.9M
    # parameters (19 classes).
    model = HRNet((32, 32, 3), 19, width=48)
    assert round(model.count_params() / 1e6, 1) == 65.9


def _source(tensor):
    return tensor._keras_history.operation


def test_branch_resolutions_and_channels():
    model = HRNet((64, 96, 3), 3, **SMALL)
    for stage, count in ((2, 2), (3, 3), (4, 4)):
        for r in range(count):
            out = model.get_layer(f"stage{stage}_m1_fuse_out{r}").output
            assert tuple(out.shape[1:]) == (16 // 2**r, 24 // 2**r, 4 * 2**r)
        with pytest.raises(ValueError):
            model.get_layer(f"stage{stage}_m1_fuse_out{count}")
    assert model.get_layer("head_concat").output.shape[1:] == (16, 24, 4 * (1 + 2 + 4 + 8))
    assert model(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 64, 96, 3)


def test_fusion_rule_wiring():
    model = HRNet((64, 64, 3), 2, **SMALL)
    # Output resolution 1 of the stage-4 exchange unit sums: branch 0 through one strided 3x3
    # conv, branch 1 copied, branches 2 and 3 through a 1x1 conv and bilinear x2 / x4.
    add = model.get_layer("stage4_m1_fuse_sum1")
    names = sorted(_source(t).name for t in add.input)
    assert names == ["stage4_m1_b1_block1", "stage4_m1_fuse_0to1_down1",
                     "stage4_m1_fuse_2to1_up", "stage4_m1_fuse_3to1_up"]
    for s, factor in ((2, 2), (3, 4)):
        up = model.get_layer(f"stage4_m1_fuse_{s}to1_up")
        assert up.interpolation == "bilinear" and tuple(up.size) == (factor, factor)
        unit = model.get_layer(f"stage4_m1_fuse_{s}to1")  # ConvBNAct: 1x1 conv + BN
        assert (unit.kernel_size, unit.filters, unit.norm, unit.activation) == (1, 8, "batch", None)
    # From branch 0 to branch 3: three strided 3x3 convs + BN, ReLU between but not after the last.
    units = [model.get_layer(f"stage4_m1_fuse_0to3_down{k}") for k in (1, 2, 3)]
    assert [(u.kernel_size, u.strides, u.filters) for u in units] == [(3, 2, 4), (3, 2, 4),
                                                                       (3, 2, 32)]
    assert [u.activation for u in units] == ["relu", "relu", None]
    # The residual blocks are kcv's: stage 1 bottlenecks (4x wider), basic blocks on branches.
    assert isinstance(model.get_layer("stage1_block1"), kcv.layers.Bottleneck)
    assert isinstance(model.get_layer("stage4_m1_b3_block1"), kcv.layers.BasicBlock)
    assert model.get_layer("stage1_block1").output.shape[-1] == 4 * SMALL["stem_filters"]


def test_shared_layer_routine():
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    check_layer(lambda: HRNet((32, 32, 3), 3, **SMALL), x)


def test_trains_on_synthetic_shapes():
    keras.utils.set_random_seed(0)
    x, y = make_shapes(32, 32, seed=0)
    model = HRNet((32, 32, 3), 4, **{**SMALL, "width": 8})
    # Eagerly: the same train_step without tracing the graph, which cost more than the 8 steps
    # (24 -> 8-11 CPU-s over seeds 0-2, the same losses). HRNet's traced training is
    # tests/kcv/training/test_distributed.py (MirroredStrategy).
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  run_eagerly=True)
    hist = model.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]
    assert hist[-1] < 0.75 * hist[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (48, 64, 3)}, r"divisible by 32.*input_shape=\(48, 64, 3\)"),
        ({"input_shape": (None, 64, 3)}, "known"),
        ({"width": 0}, "width"),
        ({"num_modules": (2, 1, 1, 1)}, "num_modules"),
        ({"num_modules": (1, 1, 1)}, "num_modules"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (64, 64, 3), "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        HRNet(**args)
