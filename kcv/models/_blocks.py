"""The functional building blocks of the kcv model builders (private to `kcv.models`).

Two kinds live here:

- Flat blocks of plain Keras layers named as keras.applications names them (ResNet v1/v2
  residual blocks, MobileNet v1 depthwise separable and v2 inverted residual blocks), for the
  backbones, which must stay layer for layer keras.applications so that its weights files load.
  The same blocks as single layers, for models with no such constraint, are `kcv.layers`
  (`ConvBNAct`, `BasicBlock`, `Bottleneck`, `InvertedResidual`, ...).
- Pieces several model builders share: the backbone ending (top, pooling, weights, features),
  the U-Net double convolution and upsampling step (from `kcv.layers.ConvBNAct`), and the
  float32 output activation of the segmentation models.
"""

import keras

from kcv.layers import ConvBNAct

_FEATURE_STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
_RESNET_EPSILON = 1.001e-5  # keras.applications' ResNet batch-norm epsilon


# --- keras.applications-named flat blocks ----------------------------------------------------


def activation_layer(kind, name):
    """`"relu6"`: `keras.layers.ReLU(6.0)` (MobileNet); any other: `keras.layers.Activation`."""
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=name)
    return keras.layers.Activation(kind, name=name)


def conv_bn_act(x, conv, bn_name, act_name=None, *, activation="relu", epsilon=1e-3,
                momentum=0.99):
    """`conv` (a Keras convolution layer), then batch norm named `bn_name`, then (when
    `act_name` is given) the activation layer named `act_name`."""
    x = conv(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=bn_name)(x)
    return activation_layer(activation, act_name)(x) if act_name else x


def _resnet_unit(x, filters, kernel, name, strides=1, padding="same", use_bias=True, relu=True):
    """`{name}_conv`, `{name}_bn` and (with `relu`) `{name}_relu`, as keras.applications' ResNet."""
    conv = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                               use_bias=use_bias, name=f"{name}_conv")
    return conv_bn_act(x, conv, f"{name}_bn", f"{name}_relu" if relu else None,
                       epsilon=_RESNET_EPSILON)


def resnet_bn_relu(x, name):
    """Batch norm and ReLU named `{name}_bn`, `{name}_relu` (v2 pre-activation, `post_*`)."""
    x = keras.layers.BatchNormalization(epsilon=_RESNET_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def resnet_basic_v1(x, filters, stride, name):
    """Two 3x3 convolutions (BN, ReLU) without bias, torchvision's arrangement in keras'
    naming; 1x1 projection shortcut when the shape changes."""
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _resnet_unit(x, filters, 1, f"{name}_0", strides=stride, use_bias=False,
                                relu=False)
    else:
        shortcut = x
    if stride != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
    x = _resnet_unit(x, filters, 3, f"{name}_1", strides=stride,
                     padding="same" if stride == 1 else "valid", use_bias=False)
    x = _resnet_unit(x, filters, 3, f"{name}_2", use_bias=False, relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def resnet_bottleneck_v1(x, filters, stride, name):
    """keras.applications `residual_block_v1`: 1x1 (stride) -> 3x3 -> 1x1 (4x filters)."""
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = _resnet_unit(x, 4 * filters, 1, f"{name}_0", strides=stride, relu=False)
    else:
        shortcut = x
    x = _resnet_unit(x, filters, 1, f"{name}_1", strides=stride)
    x = _resnet_unit(x, filters, 3, f"{name}_2")
    x = _resnet_unit(x, 4 * filters, 1, f"{name}_3", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _v2_shortcut(x, preact, channels, stride, name):
    """Projection of the pre-activated input when the width changes, else the (subsampled) input."""
    if x.shape[-1] != channels:
        return keras.layers.Conv2D(channels, 1, strides=stride, name=f"{name}_0_conv")(preact)
    if stride > 1:
        return keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    return x


def resnet_basic_v2(x, filters, stride, name):
    """BN-ReLU-3x3(stride)-BN-ReLU-3x3, added to the shortcut (no activation after the sum)."""
    preact = resnet_bn_relu(x, f"{name}_preact")
    shortcut = _v2_shortcut(x, preact, filters, stride, name)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_1_pad")(preact)
    x = _resnet_unit(x, filters, 3, f"{name}_1", strides=stride, padding="valid", use_bias=False)
    x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    return keras.layers.Add(name=f"{name}_out")([shortcut, x])


def resnet_bottleneck_v2(x, filters, stride, name):
    """keras.applications `residual_block_v2`: BN-ReLU, 1x1 -> 3x3 (stride) -> 1x1 (4x filters)."""
    preact = resnet_bn_relu(x, f"{name}_preact")
    shortcut = _v2_shortcut(x, preact, 4 * filters, stride, name)
    x = _resnet_unit(preact, filters, 1, f"{name}_1", use_bias=False)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_2_pad")(x)
    x = _resnet_unit(x, filters, 3, f"{name}_2", strides=stride, padding="valid", use_bias=False)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return keras.layers.Add(name=f"{name}_out")([shortcut, x])


def _mobilenet_depthwise(x, stride, pad_name, conv_name, bn_name, act_name, depth_multiplier=1,
                         **bn):
    """keras.applications' MobileNet 3x3 depthwise convolution, BN and ReLU6: stride 2 pads the
    bottom/right by one pixel (`pad_name`) and convolves `valid`, stride 1 convolves `same`."""
    if stride == 2:
        x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name=pad_name)(x)
    conv = keras.layers.DepthwiseConv2D(3, strides=stride, use_bias=False,
                                        padding="same" if stride == 1 else "valid",
                                        depth_multiplier=depth_multiplier, name=conv_name)
    return conv_bn_act(x, conv, bn_name, act_name, activation="relu6", **bn)


def mobilenet_v1_block(x, filters, stride, depth_multiplier, block_id):
    """keras.applications `_depthwise_conv_block`: 3x3 depthwise and 1x1 pointwise, BN, ReLU6."""
    name = f"conv_dw_{block_id}"
    x = _mobilenet_depthwise(x, stride, f"conv_pad_{block_id}", name, f"{name}_bn",
                             f"{name}_relu", depth_multiplier=depth_multiplier)
    name = f"conv_pw_{block_id}"
    conv = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=name)
    return conv_bn_act(x, conv, f"{name}_bn", f"{name}_relu", activation="relu6")


def mobilenet_v2_block(x, filters, stride, expansion, block_id):
    """keras.applications `_inverted_res_block`: 1x1 expansion (ReLU6, skipped in block 0),
    3x3 depthwise (ReLU6), linear 1x1 projection, and the input added when shapes allow."""
    bn = {"epsilon": 1e-3, "momentum": 0.999}
    shortcut, in_channels = x, x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        conv = keras.layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False,
                                   name=f"{prefix}expand")
        x = conv_bn_act(x, conv, f"{prefix}expand_BN", f"{prefix}expand_relu",
                        activation="relu6", **bn)
    x = _mobilenet_depthwise(x, stride, f"{prefix}pad", f"{prefix}depthwise",
                             f"{prefix}depthwise_BN", f"{prefix}depthwise_relu", **bn)
    conv = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False,
                               name=f"{prefix}project")
    x = conv_bn_act(x, conv, f"{prefix}project_BN", **bn)
    if in_channels == filters and stride == 1:
        x = keras.layers.Add(name=f"{prefix}add")([shortcut, x])
    return x


def finish_backbone(inputs, x, *, include_top, pooling, weights, return_features, feature_layers,
                    name, top=None):
    """Adds the top or the pooling, builds the model, loads `weights`, selects the features.

    Args:
        inputs: the model's input tensor.
        x: the last feature map.
        include_top: whether to call `top(x)` to add the classifier.
        pooling: `None`, `"avg"` or `"max"`, applied when there is no top.
        weights: `None` or a weights file path (loaded into the full model).
        return_features: return a model with a dict of C2..C5 outputs instead.
        feature_layers: `{"C2": layer_name, ...}` of the feature maps at strides 4..32.
        name: model name.
        top: callable adding the classifier head to `x`.

    Returns:
        A `keras.Model`.
    """
    if include_top:
        x = top(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    if return_features:
        outputs = {key: model.get_layer(feature_layers[key]).output for key in _FEATURE_STRIDES}
        model = keras.Model(inputs, outputs, name=name)
    return model


# --- segmentation pieces ----------------------------------------------------------------------


def group_count(filters):
    """Groups for group norm: 8 (or fewer for narrow layers), dividing `filters`."""
    return next(g for g in (8, 4, 2, 1) if filters % g == 0)


def double_conv(x, filters, norm, name):
    """The U-Net unit: two `ConvBNAct` 3x3 convolutions (`{name}_conv1`, `{name}_conv2`), each
    with `norm` and ReLU (bias only without normalization)."""
    for i in (1, 2):
        x = ConvBNAct(filters, 3, norm=norm, norm_groups=group_count(filters),
                      name=f"{name}_conv{i}")(x)
    return x


def upsample(x, filters, upsampling, name):
    """Doubles the resolution: `"transpose"` is a 2x2 stride-2 transposed convolution
    (`{name}_upconv`), `"bilinear"` a bilinear resize (`{name}_up`) and a 1x1 convolution."""
    if upsampling == "transpose":
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    return keras.layers.Conv2D(filters, 1, name=f"{name}_upconv")(x)


def output_activation_layer(x, num_classes, output_activation, name=None):
    """The float32 output activation: `"auto"` is sigmoid for one class and softmax otherwise;
    `None` gives logits (a linear layer). `name` defaults to `"probabilities"` / `"logits"`;
    models with several heads pass one name per head."""
    if output_activation == "auto":
        output_activation = "sigmoid" if num_classes == 1 else "softmax"
    if name is None:
        name = "probabilities" if output_activation else "logits"
    return keras.layers.Activation(output_activation or "linear", dtype="float32", name=name)(x)
