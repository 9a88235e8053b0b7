"""OpenPose (Cao et al., CVPR 2017): a backbone, then stages predicting confidence maps and part
affinity fields, each from the features and the previous stage's predictions."""

import keras

from kcv.data.keypoints import check_limbs
from kcv.layers._checks import check_positive_int
from kcv.models._checks import check_input_shape
from kcv.models.backbones import MobileNetV2

_BACKBONES = ("vgg19", "mobilenet_v2")
# The first 10 convolutions of VGG-19 (blocks 1-4 up to conv4_2): (filters, convolutions) per
# block, a 2x2 max pooling after each of the first three (stride 8).
_VGG19_FIRST_10 = ((64, 2), (128, 2), (256, 4), (512, 2))


def _width(filters, alpha):
    return max(1, int(round(filters * alpha)))


def _conv(x, filters, kernel, name, relu=True):
    return keras.layers.Conv2D(filters, kernel, padding="same", name=name,
                               activation="relu" if relu else None,
                               kernel_initializer="he_normal" if relu else "glorot_uniform")(x)


def _vgg19_features(inputs, alpha):
    """VGG-19's first 10 layers (keras.applications' names), stride 8."""
    x = inputs
    for block, (filters, convs) in enumerate(_VGG19_FIRST_10, start=1):
        for i in range(1, convs + 1):
            x = _conv(x, _width(filters, alpha), 3, f"block{block}_conv{i}")
        if block < 4:
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return x


def _mobilenet_v2_features(inputs, alpha):
    """MobileNetV2 up to its stride-8 feature map (`block_5_add`, `C3`), layers shared with
    `kcv.models.MobileNetV2` (so its weights files load by name)."""
    backbone = MobileNetV2(tuple(inputs.shape[1:]), alpha=alpha, include_top=False)
    truncated = keras.Model(backbone.input, backbone.get_layer("block_5_add").output)
    return truncated(inputs)


def _branch(x, kernel, convs, filters, hidden, outputs, name):
    for i in range(1, convs + 1):
        x = _conv(x, filters, kernel, f"{name}_conv{i}")
    x = _conv(x, hidden, 1, f"{name}_conv{convs + 1}")
    return _conv(x, outputs, 1, f"{name}_out", relu=False)


def OpenPose(input_shape, num_keypoints, limbs, stages=6, backbone="vgg19", alpha=1.0,
             stage_filters=128, refinement_kernel=7, name="openpose"):
    """Builds the two-branch multi-stage OpenPose network (CVPR 2017).

    The backbone (VGG-19's first 10 convolutions as in the paper, or MobileNetV2 up to stride
    8 for phones) is followed by two 3x3 convolutions (256 and 128 channels times `alpha`, the
    "CPM" layers of the authors' code) giving the features F at stride 8. Stage 1 predicts the
    confidence maps S^1 and the part affinity fields L^1 from F, each branch with three 3x3
    convolutions, a 1x1 convolution of `4 * stage_filters` channels (512 in the paper) and a 1x1 output convolution; every later
    stage t predicts S^t and L^t from `concat(F, S^{t-1}, L^{t-1})` with five
    `refinement_kernel` x `refinement_kernel` convolutions (7x7 in the paper), a 1x1
    convolution and the 1x1 output. Every stage is an output, so that a loss per stage
    (`kcv.losses.stage_losses`) supervises each of them. The outputs are linear and float32
    under mixed precision. Person assembly (`kcv.models.pose.assemble_people`) runs outside the
    model, on its last stage's outputs.

    Args:
        input_shape: `(H, W, C)`, H and W known and divisible by 8 (32 for `"mobilenet_v2"`).
        num_keypoints: `K`, the confidence-map channels (no background channel).
        limbs: `L` pairs `(j1, j2)` of keypoint indices, one field (2 channels) each.
        stages: number of stages (the paper: 6).
        backbone: `"vgg19"` or `"mobilenet_v2"`.
        alpha: width multiplier of the backbone and CPM layers (MobileNetV2's alpha).
        stage_filters: channels of the stages' convolutions (the paper: 128).
        refinement_kernel: kernel size of stages 2.. (the paper: 7).
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` to a dict with, for each stage t = 1..stages,
        `"stage{t}_heatmaps"` `[B, H/8, W/8, K]` and `"stage{t}_pafs"` `[B, H/8, W/8, 2L]`
        (channel `2l` the x and `2l + 1` the y component of limb l). Output pixel (i, j) is
        the input point (x, y) = (8j, 8i), the convention of `kcv.data.keypoints`.

    Example:
        >>> model = OpenPose((64, 64, 3), 3, [(0, 1), (1, 2)], stages=2, alpha=0.25,
        ...                  stage_filters=16, refinement_kernel=3)
        >>> {k: v.shape for k, v in sorted(model.output.items())}["stage2_pafs"]
        (None, 8, 8, 4)

    Reference:
        Cao, Simon, Wei & Sheikh, "Realtime Multi-Person 2D Pose Estimation using Part Affinity
        Fields", CVPR 2017; Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015;
        Sandler et al., "MobileNetV2", CVPR 2018.
    """
    # === Validate ===
    for key, value in (("num_keypoints", num_keypoints), ("stages", stages),
                       ("stage_filters", stage_filters), ("refinement_kernel", refinement_kernel)):
        check_positive_int(key, value)
    limbs = check_limbs(limbs, num_keypoints)
    if backbone not in _BACKBONES:
        raise ValueError(f"`backbone` must be one of {_BACKBONES}. Received: backbone={backbone!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"`alpha` must be a positive number. Received: alpha={alpha!r}")
    factor = 8 if backbone == "vgg19" else 32
    check_input_shape(input_shape, factor, f"{factor} (backbone={backbone!r})", known=True)

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if backbone == "vgg19":
        x = _vgg19_features(inputs, alpha)
    else:
        x = _mobilenet_v2_features(inputs, alpha)
    x = _conv(x, _width(256, alpha), 3, "cpm_conv1")
    features = _conv(x, _width(128, alpha), 3, "cpm_conv2")
    outputs = {}
    x = features
    for t in range(1, stages + 1):
        if t == 1:
            kernel, convs, hidden = 3, 3, 4 * stage_filters
        else:
            kernel, convs, hidden = refinement_kernel, 5, stage_filters
            x = keras.layers.Concatenate(name=f"stage{t}_concat")(
                [features, outputs[f"stage{t - 1}_heatmaps"], outputs[f"stage{t - 1}_pafs"]])
        for key, channels in (("pafs", 2 * len(limbs)), ("heatmaps", num_keypoints)):
            y = _branch(x, kernel, convs, stage_filters, hidden, channels, f"stage{t}_{key}")
            outputs[f"stage{t}_{key}"] = keras.layers.Activation(
                "linear", dtype="float32", name=f"stage{t}_{key}")(y)
    return keras.Model(inputs, outputs, name=name)
