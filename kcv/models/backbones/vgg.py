"""VGG16 as a Keras functional model (keras.applications' layer names), optionally with batch norm."""

import keras

from kcv.models._blocks import conv_bn_act, finish_backbone
from kcv.models._checks import validate_backbone_args

_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (filters, convolutions)


def VGG16(input_shape=(224, 224, 3), batch_norm=False, include_top=True, weights=None,
          pooling=None, classes=1000, classifier_activation="softmax", return_features=False,
          name=None):
    """Builds VGG16: five stages of stacked 3x3 convolutions, each closed by 2x2 max pooling.

    Stacking 3x3 convolutions gives the field of a larger kernel with fewer weights and more
    non-linearities (two 3x3 see 5x5, three see 7x7). With `batch_norm=False` the network is
    layer for layer `keras.applications.VGG16` (whose weights files load with `weights=path`);
    with `batch_norm=True` each convolution (bias kept, as torchvision's `vgg16_bn`) is followed
    by batch normalization and then ReLU.

    Args:
        input_shape: `(H, W, C)`, H and W multiples of 32 (`None` allowed without the top).
        batch_norm: insert batch normalization after every convolution.
        include_top: add the flatten, two 4096-unit dense layers and the classifier (the input
            size then fixes the first dense layer's size: 224x224 gives the published 138.36M
            parameters).
        weights: `None` or the path to a weights file (e.g. the keras.applications
            `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, with `batch_norm=False`).
        pooling: `None`, `"avg"` or `"max"` global pooling when `include_top=False`.
        classes: number of classes of the top.
        classifier_activation: activation of the top (`None` for logits).
        return_features: return a model whose output is a dict of feature maps at strides
            4, 8, 16, 32: `C2` = last convolution of stage 3 (`block3_conv3`), `C3` = of stage
            4, `C4` = of stage 5, `C5` = `block5_pool` (needs `include_top=False`).
        name: model name (default `"vgg16"`, or `"vgg16_bn"`).

    Returns:
        A `keras.Model`.

    Example:
        >>> model = VGG16((64, 64, 3), classes=10)
        >>> model.output.shape
        (None, 10)
        >>> c = VGG16((64, 64, 3), batch_norm=True, include_top=False, return_features=True)
        >>> c.output["C2"].shape
        (None, 16, 16, 256)

    Reference:
        Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
        Recognition", ICLR 2015.
    """
    # === Validate ===
    input_shape = validate_backbone_args(input_shape, include_top, weights, pooling, classes,
                                         return_features, fixed_size=include_top)
    if name is None:
        name = "vgg16_bn" if batch_norm else "vgg16"

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = inputs
    features = {}
    for stage, (filters, convs) in enumerate(_VGG16_STAGES, start=1):
        for i in range(1, convs + 1):
            conv_name = f"block{stage}_conv{i}"
            if batch_norm:
                conv = keras.layers.Conv2D(filters, 3, padding="same", name=conv_name)
                x = conv_bn_act(x, conv, f"block{stage}_bn{i}", f"block{stage}_relu{i}")
            else:
                x = keras.layers.Conv2D(filters, 3, activation="relu", padding="same",
                                        name=conv_name)(x)
        if stage >= 3:
            features[f"C{stage - 1}"] = f"block{stage}_relu{convs}" if batch_norm else conv_name
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{stage}_pool")(x)
    features["C5"] = "block5_pool"

    def top(x):
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
        x = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)

    return finish_backbone(inputs, x, include_top=include_top, pooling=pooling, weights=weights,
                           return_features=return_features, feature_layers=features, name=name,
                           top=top)
