"""MobileNet v1 and v2 as Keras functional models, layer for layer as keras.applications builds them.

The layer names, order, shapes and padding are those of `keras.applications.MobileNet` and
`keras.applications.MobileNetV2`, so `ours.set_weights(theirs.get_weights())` gives the same
outputs and a keras.applications weights file (`weights=path`) loads as it is.
"""

import keras

from kcv.layers._checks import check_positive_int
from kcv.models._blocks import conv_bn_act, finish_backbone, mobilenet_v1_block, mobilenet_v2_block
from kcv.models._checks import validate_backbone_args

_V1_BLOCKS = (  # (pointwise filters, stride) of the 13 depthwise separable blocks
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
_V1_FEATURES = {"C2": "conv_pw_3_relu", "C3": "conv_pw_5_relu", "C4": "conv_pw_11_relu",
                "C5": "conv_pw_13_relu"}

_V2_BLOCKS = (  # (output filters, stride, expansion) of the 17 inverted residual blocks
    (16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6),
)
_V2_FEATURES = {"C2": "block_2_add", "C3": "block_5_add", "C4": "block_12_add", "C5": "out_relu"}


def _make_divisible(value, divisor=8):
    """Rounds a channel count to the nearest multiple of `divisor`, never below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"`alpha` must be a positive number. Received: alpha={alpha!r}")


def MobileNetV1(input_shape=(224, 224, 3), alpha=1.0, depth_multiplier=1, dropout=1e-3,
                include_top=True, weights=None, pooling=None, classes=1000,
                classifier_activation="softmax", return_features=False, name="mobilenet"):
    """Builds MobileNet v1: a 3x3 convolution and 13 depthwise separable blocks, ReLU6 throughout.

    Each block is a 3x3 depthwise convolution and a 1x1 pointwise convolution, each followed by
    batch normalization and ReLU6; stride-2 blocks pad the bottom/right by one pixel and use a
    valid convolution, as keras.applications does (so its weights load unchanged).

    Args:
        input_shape: `(H, W, C)`, H and W multiples of 32 (or `None` for any such size).
        alpha: width multiplier: every layer has `int(filters * alpha)` channels.
        depth_multiplier: channel multiplier of the depthwise convolutions.
        dropout: dropout rate before the classifier.
        include_top: add global average pooling and the 1x1 convolution classifier.
        weights: `None` (random initialization) or the path to a weights file, such as the
            keras.applications `mobilenet_1_0_224_tf.h5` (with the top) or `..._no_top.h5`.
        pooling: `None`, `"avg"` or `"max"` global pooling when `include_top=False`.
        classes: number of classes of the top.
        classifier_activation: activation of the top (`None` for logits).
        return_features: return a model whose output is a dict of feature maps `C2`..`C5` at
            strides 4, 8, 16, 32 (needs `include_top=False`).
        name: model name.

    Returns:
        A `keras.Model`: class scores `[B, classes]`, the last feature map, pooled features,
        or the dict of feature maps.

    Example:
        >>> model = MobileNetV1((128, 128, 3), alpha=0.5, classes=10)
        >>> model.output.shape
        (None, 10)
        >>> features = MobileNetV1((128, 128, 3), include_top=False, return_features=True)
        >>> {key: tensor.shape for key, tensor in features.output.items()}["C3"]
        (None, 16, 16, 256)

    Reference:
        Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
        Applications", arXiv:1704.04861, 2017.
    """
    # === Validate ===
    _check_alpha(alpha)
    check_positive_int("depth_multiplier", depth_multiplier)
    input_shape = validate_backbone_args(input_shape, include_top, weights, pooling, classes,
                                         return_features)

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="input_layer")
    conv = keras.layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same", use_bias=False,
                               name="conv1")
    x = conv_bn_act(inputs, conv, "conv1_bn", "conv1_relu", activation="relu6")
    for block_id, (filters, stride) in enumerate(_V1_BLOCKS, start=1):
        x = mobilenet_v1_block(x, int(filters * alpha), stride, depth_multiplier, block_id)

    def top(x):
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="global_pool")(x)
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = keras.layers.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
        x = keras.layers.Reshape((classes,), name="reshape_2")(x)
        return keras.layers.Activation(classifier_activation, name="predictions")(x)

    return finish_backbone(inputs, x, include_top=include_top, pooling=pooling, weights=weights,
                           return_features=return_features, feature_layers=_V1_FEATURES,
                           name=name, top=top)


def MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=True, weights=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                return_features=False, name="mobilenetv2"):
    """Builds MobileNet v2: 17 inverted residual blocks with linear bottlenecks.

    Each block expands the channels 6x with a 1x1 convolution (ReLU6), filters them with a 3x3
    depthwise convolution (ReLU6), and projects them back with a linear 1x1 convolution (no
    activation: the "linear bottleneck"); the input is added when stride and width allow.
    Channel counts are `int(filters * alpha)` rounded to multiples of 8, the last 1x1
    convolution has 1280 channels (more when `alpha > 1`), as in keras.applications.

    Args:
        input_shape: `(H, W, C)`, H and W multiples of 32 (or `None` for any such size).
        alpha: width multiplier (keras.applications publishes 0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
        include_top: add global average pooling and the dense classifier.
        weights: `None` (random initialization) or the path to a weights file, such as the
            keras.applications `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5`.
        pooling: `None`, `"avg"` or `"max"` global pooling when `include_top=False`.
        classes: number of classes of the top.
        classifier_activation: activation of the top (`None` for logits).
        return_features: return a model whose output is a dict of feature maps `C2`..`C5` at
            strides 4, 8, 16, 32 (needs `include_top=False`).
        name: model name.

    Returns:
        A `keras.Model`: class scores `[B, classes]`, the last feature map, pooled features,
        or the dict of feature maps.

    Example:
        >>> model = MobileNetV2((128, 128, 3), alpha=0.35, classes=10)
        >>> c = MobileNetV2((128, 128, 3), include_top=False, return_features=True)
        >>> c.output["C5"].shape
        (None, 4, 4, 1280)

    Reference:
        Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
    """
    # === Validate ===
    _check_alpha(alpha)
    input_shape = validate_backbone_args(input_shape, include_top, weights, pooling, classes,
                                         return_features)

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="input_layer")
    bn = {"epsilon": 1e-3, "momentum": 0.999}
    conv = keras.layers.Conv2D(_make_divisible(32 * alpha), 3, strides=2, padding="same",
                               use_bias=False, name="Conv1")
    x = conv_bn_act(inputs, conv, "bn_Conv1", "Conv1_relu", activation="relu6", **bn)
    for block_id, (filters, stride, expansion) in enumerate(_V2_BLOCKS):
        x = mobilenet_v2_block(x, _make_divisible(int(filters * alpha)), stride, expansion,
                               block_id)
    last_filters = _make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    conv = keras.layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")
    x = conv_bn_act(x, conv, "Conv_1_bn", "out_relu", activation="relu6", **bn)

    def top(x):
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)

    return finish_backbone(inputs, x, include_top=include_top, pooling=pooling, weights=weights,
                           return_features=return_features, feature_layers=_V2_FEATURES,
                           name=name, top=top)
