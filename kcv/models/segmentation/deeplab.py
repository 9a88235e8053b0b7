"""DeepLabV3 / DeepLabV3+ (Chen et al., 2017, 2018) on a dilated MobileNetV2 or ResNet50."""

import copy

import keras

from kcv.layers.aspp import ASPP
from kcv.models.segmentation._checks import (
    check_input_shape,
    check_positive_ints,
    output_activation_layer,
)

_BACKBONES = ("mobilenet_v2", "resnet50")
_OUTPUT_STRIDES = (8, 16, 32)
_BN_EPSILON = 1e-5


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _source_names(layer_config):
    """Names of the layers whose outputs feed a layer, read from its serialized inbound nodes."""
    names = []

    def visit(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
            else:
                for value in obj.values():
                    visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)

    visit(layer_config.get("inbound_nodes", []))
    return names


def dilate(model, output_stride, bn_momentum=None):
    """Rebuilds a functional CNN so that it downsamples by at most `output_stride`.

    Walking the layers in order and tracking the accumulated stride, every strided layer that
    would take the stride beyond `output_stride` gets stride 1, and the layers after it get a
    dilation rate multiplied by the removed stride (the strided layer itself keeps the rate
    before it), which keeps each layer's field of view: the atrous ("dilated") backbone of
    DeepLab. Layers with `valid` padding that lose their stride switch to `same` and the
    `ZeroPadding2D` in front of them is emptied (keras.applications pads explicitly before
    strided convolutions). Works on layers that expose `strides` (and `dilation_rate`) in their
    config: Keras convolutions and pooling, and kcv blocks. The weights are copied over.

    Args:
        model: a functional `keras.Model` (built).
        output_stride: the largest accumulated stride to keep (a power of two).
        bn_momentum: when given, also the momentum of every `BatchNormalization` layer (a
            training setting: keras.applications' MobileNetV2 uses 0.999, whose moving
            statistics need thousands of steps to settle when training from scratch).

    Returns:
        A new functional model with the same weights, name and outputs.

    Reference:
        Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017,
        section 3.1 (going deeper with atrous convolution).
    """
    config = copy.deepcopy(model.get_config())
    layers = {layer["config"]["name"]: layer for layer in config["layers"]}
    stride, rate = {}, {}
    for layer in config["layers"]:
        name, cfg = layer["config"]["name"], layer["config"]
        if bn_momentum is not None and layer["class_name"] == "BatchNormalization":
            cfg["momentum"] = float(bn_momentum)
        sources = _source_names(layer)
        in_stride = max((stride[s] for s in sources), default=1)
        in_rate = max((rate[s] for s in sources), default=1)
        step = _pair(cfg["strides"])[0] if cfg.get("strides") is not None else 1
        out_rate = in_rate
        if step > 1 and in_stride * step > output_stride:
            cfg["strides"] = [1, 1] if isinstance(cfg["strides"], (list, tuple)) else 1
            out_rate = in_rate * step
            step = 1
            if cfg.get("padding") == "valid":
                cfg["padding"] = "same"
                for s in sources:
                    if layers[s]["class_name"] == "ZeroPadding2D":
                        layers[s]["config"]["padding"] = [[0, 0], [0, 0]]
            if "dilation_rate" in cfg and in_rate > 1:
                cfg["dilation_rate"] = [in_rate, in_rate]
        elif "dilation_rate" in cfg and in_rate > 1:
            cfg["dilation_rate"] = [in_rate, in_rate]
        stride[name] = in_stride * step
        rate[name] = out_rate
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _backbone(backbone, input_shape, alpha, weights):
    """The backbone as a two-output model: low-level features at stride 4, last at stride 32."""
    if backbone == "mobilenet_v2":
        net = keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha,
                                             include_top=False, weights=weights)
        names = ("block_2_add", "out_relu")
    else:
        net = keras.applications.ResNet50(input_shape=input_shape, include_top=False,
                                          weights=weights)
        names = ("conv2_block3_out", "conv5_block3_out")
    return keras.Model(net.input, [net.get_layer(n).output for n in names], name="backbone")


def DeepLabV3(input_shape, num_classes, backbone="mobilenet_v2", output_stride=16, alpha=1.0,
              filters=256, rates=(6, 12, 18), decoder=False, decoder_filters=48, dropout=0.1,
              backbone_weights=None, backbone_bn_momentum=None, output_activation="auto",
              name="deeplab_v3"):
    """Builds DeepLabV3 (or DeepLabV3+ with `decoder=True`) on a dilated backbone.

    The backbone's last stages are made atrous (`dilate`) so that it downsamples by
    `output_stride` instead of 32. ASPP (`kcv.layers.ASPP`: 1x1 conv, 3x3 atrous convs at
    `rates`, image pooling, concatenation and a 1x1 projection, each with batch norm and ReLU)
    runs on the last features; `rates` are given for output stride 16 and scaled with it
    (doubled at 8, as the paper does). A 1x1 convolution classifies, and bilinear upsampling
    with a static factor (TFLite `RESIZE_BILINEAR`) brings the logits to the input size. The
    DeepLabV3+ decoder instead upsamples the ASPP output to stride 4, concatenates the
    backbone's stride-4 features reduced to `decoder_filters` channels by a 1x1 convolution,
    refines with two 3x3 convolutions and then classifies and upsamples by 4.

    Args:
        input_shape: `(H, W, C)`, H and W known and divisible by 32.
        num_classes: output channels (1 means binary segmentation).
        backbone: `"mobilenet_v2"` or `"resnet50"` (the keras.applications architectures).
        output_stride: 8, 16 (default) or 32 (no atrous stage).
        alpha: MobileNetV2 width multiplier.
        filters: ASPP (and decoder) width; the paper: 256.
        rates: atrous rates at output stride 16; the paper: (6, 12, 18), for 513-pixel crops
            (a 33x33 map). Scale them down with smaller inputs: a rate beyond the map leaves
            only the centre tap (a 1x1 convolution, as the seed notes say), and TF on CPU pads
            the map to a multiple of the rate (space_to_batch), which costs time.
        decoder: add the DeepLabV3+ decoder.
        decoder_filters: channels of the reduced low-level features (the paper: 48).
        dropout: dropout after the ASPP projection (and the decoder).
        backbone_weights: `None` (random), `"imagenet"` or a keras.applications weights file.
        backbone_bn_momentum: `None` keeps the backbone's batch-norm momentum (MobileNetV2:
            0.999, ResNet50: 0.99); a smaller value (e.g. 0.9) lets the moving statistics settle
            within a short training from scratch.
        output_activation: `"auto"` (softmax, or sigmoid for one class), `None` for logits, or
            a Keras activation name; float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` images to `[B, H, W, num_classes]`.

    Example:
        >>> model = DeepLabV3((256, 256, 3), 21, backbone="mobilenet_v2", output_stride=16)
        >>> plus = DeepLabV3((256, 256, 3), 21, backbone="resnet50", output_stride=8,
        ...                  decoder=True)

    Reference:
        Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
        Segmentation", arXiv:1706.05587, 2017; Chen et al., "Encoder-Decoder with Atrous
        Separable Convolution for Semantic Image Segmentation" (DeepLabV3+), ECCV 2018.
    """
    # === Validate ===
    if backbone not in _BACKBONES:
        raise ValueError(f"`backbone` must be one of {_BACKBONES}. Received: backbone={backbone!r}")
    if output_stride not in _OUTPUT_STRIDES:
        raise ValueError(f"`output_stride` must be one of {_OUTPUT_STRIDES}. "
                         f"Received: output_stride={output_stride!r}")
    check_positive_ints(num_classes=num_classes, filters=filters,
                        decoder_filters=decoder_filters)
    if not isinstance(rates, (list, tuple)) or not rates or any(
            isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"`rates` must be positive ints. Received: rates={rates!r}")
    if output_stride == 32 and any(r % 2 for r in rates):
        raise ValueError(f"At output_stride=32 the rates are halved and must stay ints. "
                         f"Received: rates={rates!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    check_input_shape(input_shape, 32, "32 (the backbone downsamples by 32 before dilation)",
                      known=True)
    scaled_rates = tuple(r * 16 // output_stride for r in rates)

    # === Functional Model ===
    features = dilate(_backbone(backbone, tuple(input_shape), alpha, backbone_weights),
                      output_stride, bn_momentum=backbone_bn_momentum)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    low, high = features(inputs)
    x = ASPP(filters, scaled_rates, dropout=dropout, name="aspp")(high)
    if decoder:
        x = keras.layers.UpSampling2D(output_stride // 4, interpolation="bilinear",
                                      name="decoder_up")(x)
        y = _conv_bn_relu(low, decoder_filters, 1, "decoder_reduce")
        x = keras.layers.Concatenate(name="decoder_concat")([x, y])
        x = _conv_bn_relu(x, filters, 3, "decoder_conv1")
        x = _conv_bn_relu(x, filters, 3, "decoder_conv2")
        factor = 4
    else:
        factor = output_stride
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = keras.layers.UpSampling2D(factor, interpolation="bilinear", name="upsample")(x)
    x = output_activation_layer(x, num_classes, output_activation)
    return keras.Model(inputs, x, name=name)


def _conv_bn_relu(x, filters, kernel, name):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)
