"""ResNet v1 (basic and bottleneck blocks) and v2 (full pre-activation) as Keras functional models.

The bottleneck networks (ResNet50/101/152) are built layer for layer as keras.applications
builds `ResNet50`/`ResNet101`/`ResNet152` (`preact=False`) and `ResNet50V2`/`101V2`/`152V2`
(`preact=True`): same names, order and shapes, so keras.applications weights files load as they
are. The basic-block networks (ResNet18/34), which keras.applications lacks, follow the paper and
torchvision: 3x3 convolutions without bias, stride in the first convolution of a stage's first
block, 1x1 projection shortcut when the shape changes (11.69M/21.80M parameters with 1000 classes).
With `preact=True` they follow the keras.applications v2 arrangement (pre-activation units, the
stride in the last block of stages 2-4, `post_bn`/`post_relu` after the last stage).
"""

import keras

from kcv.models._blocks import (
    finish_backbone,
    resnet_basic_v1,
    resnet_basic_v2,
    resnet_bn_relu,
    resnet_bottleneck_v1,
    resnet_bottleneck_v2,
)
from kcv.models._checks import validate_backbone_args

_STAGE_FILTERS = (64, 128, 256, 512)


def ResNet(blocks_per_stage, bottleneck, preact=False, input_shape=(224, 224, 3),
           include_top=True, weights=None, pooling=None, classes=1000,
           classifier_activation="softmax", return_features=False, name="resnet"):
    """Builds a ResNet from its number of blocks per stage (the ResNet18..152 builders call this).

    Args:
        blocks_per_stage: four ints, the blocks of stages conv2..conv5 (e.g. `(3, 4, 6, 3)`).
        bottleneck: `True` for 1x1-3x3-1x1 bottleneck blocks (4x wider output), `False` for
            two 3x3 convolutions (basic blocks).
        preact: `False` for ResNet v1 (post-activation), `True` for v2 (full pre-activation,
            He et al. 2016b).
        input_shape: `(H, W, C)`, H and W multiples of 32 (or `None` for any such size).
        include_top: add global average pooling and the dense classifier.
        weights: `None` or the path to a weights file (for the bottleneck networks, the
            keras.applications files, e.g. `resnet50_weights_tf_dim_ordering_tf_kernels.h5`
            or `resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5`).
        pooling: `None`, `"avg"` or `"max"` global pooling when `include_top=False`.
        classes: number of classes of the top.
        classifier_activation: activation of the top (`None` for logits).
        return_features: return a model whose output is a dict of feature maps `C2`..`C5` at
            strides 4, 8, 16, 32 (needs `include_top=False`). For v1 they are the stage outputs
            `conv{k}_block{n}_out`; for v2, whose stages 2-4 downsample in their last block,
            the pre-activated input of that block `conv{k}_block{n}_preact_relu` and, for C5,
            `post_relu`.
        name: model name.

    Returns:
        A `keras.Model`.

    Example:
        >>> model = ResNet((2, 2, 2, 2), bottleneck=False, input_shape=(64, 64, 3), classes=10)
        >>> model.output.shape
        (None, 10)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """
    # === Validate ===
    if (not isinstance(blocks_per_stage, (list, tuple)) or len(blocks_per_stage) != 4
            or not all(isinstance(n, int) and n >= 1 for n in blocks_per_stage)):
        raise ValueError("`blocks_per_stage` must be four positive ints. "
                         f"Received: blocks_per_stage={blocks_per_stage!r}")
    input_shape = validate_backbone_args(input_shape, include_top, weights, pooling, classes,
                                         return_features)
    if preact:
        block = resnet_bottleneck_v2 if bottleneck else resnet_basic_v2
    else:
        block = resnet_bottleneck_v1 if bottleneck else resnet_basic_v1
    use_bias = bottleneck or preact  # keras.applications' stems have a bias; torchvision's not

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    if not preact:
        x = resnet_bn_relu(x, "conv1")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = {}
    for stage, (filters, blocks) in enumerate(zip(_STAGE_FILTERS, blocks_per_stage)):
        prefix = f"conv{stage + 2}"
        for i in range(1, blocks + 1):
            if preact:  # v2 downsamples in the last block of stages conv2..conv4
                stride = 2 if i == blocks and stage < 3 else 1
            else:  # v1 in the first block of stages conv3..conv5
                stride = 2 if i == 1 and stage > 0 else 1
            x = block(x, filters, stride, name=f"{prefix}_block{i}")
        key = f"C{stage + 2}"
        if not preact:
            features[key] = f"{prefix}_block{blocks}_out"
        elif stage < 3:
            features[key] = f"{prefix}_block{blocks}_preact_relu"
    if preact:
        x = resnet_bn_relu(x, "post")
        features["C5"] = "post_relu"

    def top(x):
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)

    return finish_backbone(inputs, x, include_top=include_top, pooling=pooling, weights=weights,
                           return_features=return_features, feature_layers=features, name=name,
                           top=top)


def _builder(depth, blocks_per_stage, bottleneck):
    def build(input_shape=(224, 224, 3), preact=False, include_top=True, weights=None,
              pooling=None, classes=1000, classifier_activation="softmax",
              return_features=False, name=None):
        if name is None:
            name = f"resnet{depth}" + ("v2" if preact else "")
        return ResNet(blocks_per_stage, bottleneck, preact=preact, input_shape=input_shape,
                      include_top=include_top, weights=weights, pooling=pooling, classes=classes,
                      classifier_activation=classifier_activation,
                      return_features=return_features, name=name)

    block = "bottleneck" if bottleneck else "basic"
    if bottleneck:
        origin = (f"Layer for layer keras.applications.ResNet{depth} (v1) and ResNet{depth}V2 "
                  "(v2), whose weights files load with `weights=path`.")
    else:
        origin = "Basic blocks as in the paper and torchvision (no convolution bias)."
    build.__name__ = build.__qualname__ = f"ResNet{depth}"
    build.__doc__ = f"""Builds ResNet-{depth}: {block} blocks {blocks_per_stage} in stages conv2..conv5.

    `preact=False` gives ResNet v1, `preact=True` v2 (full pre-activation). {origin}

    Args:
        input_shape: `(H, W, C)`, H and W multiples of 32 (or `None` for any such size).
        preact: `True` for pre-activation (v2) blocks.
        include_top: add global average pooling and the dense classifier.
        weights: `None` or the path to a weights file.
        pooling: `None`, `"avg"` or `"max"` global pooling when `include_top=False`.
        classes: number of classes of the top.
        classifier_activation: activation of the top (`None` for logits).
        return_features: return a dict of feature maps `C2`..`C5` at strides 4..32 (needs
            `include_top=False`); see `kcv.models.backbones.resnet.ResNet`.
        name: model name (default `"resnet{depth}"`, or `"resnet{depth}v2"`).

    Returns:
        A `keras.Model`.

    Example:
        >>> c = ResNet{depth}((64, 64, 3), include_top=False, return_features=True)
        >>> c.output["C5"].shape
        (None, 2, 2, {512 * (4 if bottleneck else 1)})

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """
    return build


ResNet18 = _builder(18, (2, 2, 2, 2), bottleneck=False)
ResNet34 = _builder(34, (3, 4, 6, 3), bottleneck=False)
ResNet50 = _builder(50, (3, 4, 6, 3), bottleneck=True)
ResNet101 = _builder(101, (3, 4, 23, 3), bottleneck=True)
ResNet152 = _builder(152, (3, 8, 36, 3), bottleneck=True)
