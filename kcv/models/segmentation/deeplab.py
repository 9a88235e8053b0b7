"""DeepLabV3 / DeepLabV3+ (Chen et al., 2017, 2018) on a dilated MobileNetV2 or ResNet50."""

import keras

from kcv.layers import ASPP, ConvBNAct
from kcv.layers._checks import check_positive_int, check_rates
from kcv.models._blocks import output_activation_layer
from kcv.models._checks import check_input_shape, check_one_of, check_rate, check_weights_file
from kcv.models.backbones import MobileNetV2, ResNet50
from kcv.utils.surgery import dilate

_BACKBONES = ("mobilenet_v2", "resnet50")
_OUTPUT_STRIDES = (8, 16, 32)


def _backbone(backbone, input_shape, alpha, weights):
    """kcv's backbone as a two-output model: the stride-4 features C2 and the last, C5."""
    if backbone == "mobilenet_v2":
        net = MobileNetV2(input_shape, alpha=alpha, include_top=False, weights=weights,
                          return_features=True)
    else:
        net = ResNet50(input_shape, include_top=False, weights=weights, return_features=True)
    return keras.Model(net.input, [net.output["C2"], net.output["C5"]], name="backbone")


def DeepLabV3(input_shape, num_classes, backbone="mobilenet_v2", output_stride=16, alpha=1.0,
              filters=256, rates=(6, 12, 18), decoder=False, decoder_filters=48, dropout=0.1,
              backbone_weights=None, backbone_bn_momentum=None, output_activation="auto",
              name="deeplab_v3"):
    """Builds DeepLabV3 (or DeepLabV3+ with `decoder=True`) on a dilated backbone.

    The backbone is kcv's `MobileNetV2` or `ResNet50` (layer for layer the keras.applications
    networks); its last stages are made atrous (`kcv.utils.dilate`) so that it downsamples by
    `output_stride` instead of 32. ASPP (`kcv.layers.ASPP`: 1x1 conv, 3x3 atrous convs at
    `rates`, image pooling, concatenation and a 1x1 projection, each with batch norm and ReLU)
    runs on the last features; `rates` are given for output stride 16 and scaled with it
    (doubled at 8, as the paper does). A 1x1 convolution classifies, and bilinear upsampling
    with a static factor (TFLite `RESIZE_BILINEAR`) brings the logits to the input size. The
    DeepLabV3+ decoder instead upsamples the ASPP output to stride 4, concatenates the
    backbone's stride-4 features reduced to `decoder_filters` channels by a 1x1 convolution,
    refines with two 3x3 convolutions (`kcv.layers.ConvBNAct`) and then classifies and
    upsamples by 4. Dropout sits right before the classifier, after every batch norm (Li et
    al., 2019: dropout before a batch norm shifts its statistics between training and test).

    Args:
        input_shape: `(H, W, C)`, H and W known and divisible by 32.
        num_classes: output channels (1 means binary segmentation).
        backbone: `"mobilenet_v2"` or `"resnet50"` (`kcv.models.MobileNetV2` / `ResNet50`,
            the keras.applications architectures).
        output_stride: 8, 16 (default) or 32 (no atrous stage).
        alpha: MobileNetV2 width multiplier.
        filters: ASPP (and decoder) width; the paper: 256.
        rates: atrous rates at output stride 16; the paper: (6, 12, 18), for 513-pixel crops
            (a 33x33 map). Scale them down with smaller inputs: a rate beyond the map leaves
            only the centre tap in the map (the other taps read the zero padding, so the branch
            degenerates to a 1x1 convolution, Chen et al. 2017, section 3.3), and TF on CPU pads
            the map to a multiple of the rate (space_to_batch), which costs time.
        decoder: add the DeepLabV3+ decoder.
        decoder_filters: channels of the reduced low-level features (the paper: 48).
        dropout: dropout rate before the classifier (after the ASPP, or after the decoder).
        backbone_weights: `None` (random initialization) or the path to a weights file of the
            backbone without its top, loaded before dilation (which keeps the weights): a
            keras.applications file such as
            `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5` or
            `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a `.weights.h5` file
            saved from `keras.applications.MobileNetV2/ResNet50(include_top=False)` or from
            kcv's. kcv downloads nothing.
        backbone_bn_momentum: `None` keeps the backbone's batch-norm momentum (MobileNetV2:
            0.999, ResNet50: 0.99); a smaller value (e.g. 0.9) lets the moving statistics settle
            within a short training from scratch.
        output_activation: `"auto"` (softmax, or sigmoid for one class), `None` for logits, or
            a Keras activation name; float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` images to `[B, H, W, num_classes]`.

    Example:
        >>> model = DeepLabV3((64, 64, 3), 21, alpha=0.35, output_stride=16, rates=(1, 2, 3))
        >>> model.output.shape
        (None, 64, 64, 21)
        >>> model.get_layer("aspp").input.shape  # stride 16
        (None, 4, 4, 1280)
        >>> plus = DeepLabV3((64, 64, 3), 21, backbone="resnet50", output_stride=8,
        ...                  decoder=True, rates=(1, 2, 3))
        >>> plus.get_layer("decoder_concat").output.shape  # stride 4: 256 + 48 channels
        (None, 16, 16, 304)

    Reference:
        Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
        Segmentation", arXiv:1706.05587, 2017; Chen et al., "Encoder-Decoder with Atrous
        Separable Convolution for Semantic Image Segmentation" (DeepLabV3+), ECCV 2018.
    """
    # === Validate ===
    check_one_of("backbone", backbone, _BACKBONES)
    check_one_of("output_stride", output_stride, _OUTPUT_STRIDES)
    for key, value in (("num_classes", num_classes), ("filters", filters),
                       ("decoder_filters", decoder_filters)):
        check_positive_int(key, value)
    check_rates(rates)
    if output_stride == 32 and any(r % 2 for r in rates):
        raise ValueError(f"At output_stride=32 the rates are halved and must stay ints. "
                         f"Received: rates={rates!r}")
    check_rate("dropout", dropout)
    check_weights_file("backbone_weights", backbone_weights)
    input_shape = check_input_shape(input_shape, 32, "32 (the backbone downsamples by 32 "
                                    "before dilation)", known=True)
    scaled_rates = tuple(r * 16 // output_stride for r in rates)

    # === Functional Model ===
    features = dilate(_backbone(backbone, input_shape, alpha, backbone_weights), output_stride,
                      bn_momentum=backbone_bn_momentum)
    inputs = keras.Input(shape=input_shape, name="image")
    low, high = features(inputs)
    x = ASPP(filters, scaled_rates, name="aspp")(high)
    if decoder:
        x = keras.layers.UpSampling2D(output_stride // 4, interpolation="bilinear",
                                      name="decoder_up")(x)
        y = ConvBNAct(decoder_filters, 1, name="decoder_reduce")(low)
        x = keras.layers.Concatenate(name="decoder_concat")([x, y])
        x = ConvBNAct(filters, 3, name="decoder_conv1")(x)
        x = ConvBNAct(filters, 3, name="decoder_conv2")(x)
        factor = 4
    else:
        factor = output_stride
    if dropout:
        # After the last batch norm, right before the classifier: dropout ahead of a batch norm
        # shifts its statistics between training and inference (Li et al., CVPR 2019).
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = keras.layers.UpSampling2D(factor, interpolation="bilinear", name="upsample")(x)
    x = output_activation_layer(x, num_classes, output_activation)
    return keras.Model(inputs, x, name=name)
