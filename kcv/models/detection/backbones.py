"""Detection backbones: kcv's classification networks as Faster R-CNN feature extractors.

torchvision's `torchvision.models.detection.backbone_utils` rules on kcv's keras.applications
layer-for-layer backbones: a local keras.applications weights file loaded into the network,
frozen batch norm (torchvision's `FrozenBatchNorm2d`), `trainable_backbone_layers` (the stages
that train, counted from the top, as `_resnet_fpn_extractor`), and modulated deformable
convolutions in chosen ResNet stages (DCNv2).

The five stages a backbone is cut into (`trainable_backbone_layers = k` trains the last `k`):

| stage | ResNet (torchvision) | VGG16 | MobileNetV2 |
| --- | --- | --- | --- |
| 1 | `conv1_*` (`conv1`, `bn1`) | `block1_*` | `Conv1`, `bn_Conv1`, `expanded_conv_*` |
| 2 | `conv2_*` (`layer1`) | `block2_*` | `block_1`, `block_2` |
| 3 | `conv3_*` (`layer2`) | `block3_*` | `block_3` .. `block_5` |
| 4 | `conv4_*` (`layer3`) | `block4_*` | `block_6` .. `block_12` |
| 5 | `conv5_*` (`layer4`) | `block5_*` | `block_13` .. `block_16`, `Conv_1` |

ResNet's are torchvision's. VGG16's are its five convolution blocks (with the default 3,
`conv3_1` and up train, as py-faster-rcnn fine-tunes VGG16). MobileNetV2's group the blocks by
the stride of their output (2, 4, 8, 16, 32), which are torchvision's MobileNet stages (each
starting at a stride-2 block) with the last 1x1 convolution joined to the last stage.
"""

import numbers
import re

import keras

from kcv.layers import DeformableConv2D
from kcv.models._checks import check_one_of, check_weights_file
from kcv.models.backbones import VGG16, MobileNetV2, ResNet18, ResNet50

BACKBONES = ("resnet18", "resnet50", "mobilenet_v2", "vgg16")
SINGLE_LEVEL_STRIDES = {"vgg16": 16}
"""Backbones without an FPN and the stride of their one feature map (VGG16 conv5_3)."""

DEFAULT_TRAINABLE_LAYERS = 3
NUM_STAGES = 5
_RESNETS = ("resnet18", "resnet50")
_DEFORMABLE_STAGES = (3, 4, 5)
_BUILDERS = {"resnet18": ResNet18, "resnet50": ResNet50, "mobilenet_v2": MobileNetV2,
             "vgg16": VGG16}
_MOBILENET_V2_STAGE_STARTS = (1, 3, 6, 13)  # first `block_{i}` of stages 2..5


def _stage(backbone, layer_name):
    """The stage (1..5, table of the module docstring) of a backbone layer."""
    if backbone in _RESNETS:
        match = re.match(r"(?:conv|pool)(\d)_", layer_name)
        return int(match.group(1))
    if backbone == "vgg16":
        return int(re.match(r"block(\d)_", layer_name).group(1))
    match = re.match(r"block_(\d+)_", layer_name)
    if match:
        block = int(match.group(1))
        return 1 + sum(block >= start for start in _MOBILENET_V2_STAGE_STARTS)
    return NUM_STAGES if layer_name in ("Conv_1", "Conv_1_bn", "out_relu") else 1


def resolve_trainable_layers(trainable_layers, pretrained):
    """torchvision's `_validate_trainable_layers` with max 5 and default 3.

    `None` gives 3 with pretrained weights and 5 (all stages train) without, as torchvision;
    an int is kept (torchvision ignores it without weights, with a warning; kcv keeps it).
    """
    if trainable_layers is None:
        return DEFAULT_TRAINABLE_LAYERS if pretrained else NUM_STAGES
    if (isinstance(trainable_layers, bool) or not isinstance(trainable_layers, numbers.Integral)
            or not 0 <= trainable_layers <= NUM_STAGES):
        raise ValueError(f"`trainable_backbone_layers` must be None or an int in [0, {NUM_STAGES}]. "
                         f"Received: trainable_backbone_layers={trainable_layers!r}")
    return int(trainable_layers)


def resolve_batch_norm_frozen(frozen, pretrained):
    """`freeze_batch_norm`: None gives `pretrained` (torchvision's `FrozenBatchNorm2d` exactly
    for pretrained backbones); a bool is kept."""
    if frozen is None:
        return pretrained
    if not isinstance(frozen, bool):
        raise ValueError(f"`freeze_batch_norm` must be None or a bool. "
                         f"Received: freeze_batch_norm={frozen!r}")
    return frozen


def check_deformable_stages(deformable_stages, backbone):
    """Returns `deformable_stages` as a sorted tuple (or None), naming the argument on error."""
    if deformable_stages is None:
        return None
    if (not isinstance(deformable_stages, (list, tuple)) or not deformable_stages
            or len(set(deformable_stages)) != len(deformable_stages)
            or any(s not in _DEFORMABLE_STAGES or isinstance(s, bool) for s in deformable_stages)):
        raise ValueError("`deformable_stages` must be None or distinct ResNet stages among "
                         f"{_DEFORMABLE_STAGES} (conv3_x..conv5_x). "
                         f"Received: deformable_stages={deformable_stages!r}")
    if backbone not in _RESNETS:
        raise ValueError("`deformable_stages` replaces ResNet 3x3 convolutions and needs "
                         f"backbone in {_RESNETS}. Received: backbone={backbone!r}, "
                         f"deformable_stages={deformable_stages!r}")
    return tuple(sorted(deformable_stages))


def freeze_batch_norm(model):
    """Makes every `BatchNormalization` of `model` torchvision's `FrozenBatchNorm2d`.

    `trainable = False` on a Keras batch norm both removes gamma/beta from the trainable
    weights and runs it in inference mode (moving statistics, never updated) even in a
    training call: `y = gamma * (x - mean) / sqrt(var + epsilon) + beta` with fixed values.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.Model):
            freeze_batch_norm(layer)
    return model


def freeze_stages(model, backbone, trainable_layers):
    """Freezes every layer of the stages before the last `trainable_layers` (module table)."""
    first_trainable = NUM_STAGES - trainable_layers + 1
    for layer in model.layers:
        if layer.weights and _stage(backbone, layer.name) < first_trainable:
            layer.trainable = False
    return model


def _deformable_layer(conv):
    """A modulated `DeformableConv2D` with the configuration of the Keras `Conv2D` `conv`."""
    config = conv.get_config()
    activation = config["activation"]
    return DeformableConv2D(
        config["filters"], config["kernel_size"], strides=config["strides"],
        padding=config["padding"], dilation_rate=config["dilation_rate"], modulated=True,
        use_bias=config["use_bias"], activation=None if activation == "linear" else activation,
        name=conv.name)


def make_deformable(model, stages):
    """Replaces the 3x3 convolutions of ResNet stages `stages` by modulated deformable ones.

    The stages are conv3_x..conv5_x (C3..C5); a bottleneck block has one 3x3 convolution
    (`_2_conv`), a basic block two (`_1_conv`, `_2_conv`). Each becomes a
    `kcv.layers.DeformableConv2D` of the same name and configuration with DCNv2's
    initialisation (offsets 0, masks sigmoid(0) = 0.5) whose kernel is twice the plain one,
    so that kernel x mask is the plain kernel and the returned model computes exactly what
    `model` computes until training moves the offsets and masks. The other weights are
    copied.

    Args:
        model: a kcv ResNet (keras.applications layer names).
        stages: ResNet stages among 3, 4, 5.

    Returns:
        A new `keras.Model` with the same inputs, outputs and layer names.

    Reference:
        Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019.
    """
    pattern = re.compile(rf"conv[{''.join(str(s) for s in stages)}]_block\d+_\d_conv")

    def is_target(layer):
        return (isinstance(layer, keras.layers.Conv2D) and pattern.fullmatch(layer.name)
                and tuple(layer.kernel_size) == (3, 3))

    def clone(layer):
        if is_target(layer):
            return _deformable_layer(layer)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:
            continue
        target = new.get_layer(layer.name)
        if is_target(layer):
            target.kernel.assign(2.0 * layer.kernel)
            if layer.use_bias:
                target.bias.assign(layer.bias)
        else:
            target.set_weights(layer.get_weights())
    return new


def build_backbone(backbone, input_shape, weights=None, trainable_layers=None,
                   batch_norm_frozen=None, deformable_stages=None):
    """Builds a named detection backbone with torchvision's rules (module docstring).

    Args:
        backbone: one of `BACKBONES`.
        input_shape: `(H, W, 3)`, H and W multiples of 32 or None.
        weights: None or the path of a keras.applications weights file of the network
            without its top (`check_weights_file`: "imagenet" is refused, nothing downloads).
        trainable_layers: stages that train, from the top (None: `resolve_trainable_layers`).
        batch_norm_frozen: freeze every batch norm (None: when `weights` is given, as
            torchvision uses `FrozenBatchNorm2d` exactly when the backbone is pretrained).
        deformable_stages: ResNet stages (of 3, 4, 5) made deformable (`make_deformable`).

    Returns:
        `(model, trainable_layers, batch_norm_frozen)` with the resolved values; the model
        returns a dict `C2`..`C5`, or for VGG16 the single conv5_3 map (stride 16, 512
        channels).

    Example:
        >>> model, layers, frozen = build_backbone("vgg16", (64, 64, 3), trainable_layers=3)
        >>> model.output.shape, layers, frozen
        ((None, 4, 4, 512), 3, False)
        >>> [layer.name for layer in model.layers if layer.trainable_weights][0]
        'block3_conv1'
    """
    check_one_of("backbone", backbone, BACKBONES)
    check_weights_file("backbone_weights", weights)
    deformable_stages = check_deformable_stages(deformable_stages, backbone)
    trainable_layers = resolve_trainable_layers(trainable_layers, weights is not None)
    batch_norm_frozen = resolve_batch_norm_frozen(batch_norm_frozen, weights is not None)
    model = _BUILDERS[backbone](input_shape=input_shape, include_top=False, weights=weights,
                                return_features=True)
    if backbone in SINGLE_LEVEL_STRIDES:
        model = keras.Model(model.input, model.get_layer("block5_conv3").output, name=backbone)
    if deformable_stages:
        model = make_deformable(model, deformable_stages)
    freeze_stages(model, backbone, trainable_layers)
    if batch_norm_frozen:
        freeze_batch_norm(model)
    return model, trainable_layers, batch_norm_frozen
