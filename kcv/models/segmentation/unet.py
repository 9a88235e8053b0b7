"""U-Net (Ronneberger et al., 2015) as a Keras functional model."""

import keras

from kcv.layers._checks import NORMS, check_positive_int
from kcv.models._blocks import double_conv, output_activation_layer, upsample
from kcv.models._checks import check_input_shape, check_one_of, check_rate

_UPSAMPLINGS = ("transpose", "bilinear")


def _check_unet_args(num_classes, filters, depth, norm, upsampling):
    """The checks U-Net and UNet++ share."""
    for key, value in (("num_classes", num_classes), ("filters", filters), ("depth", depth)):
        check_positive_int(key, value)
    check_one_of("norm", norm, NORMS)
    check_one_of("upsampling", upsampling, _UPSAMPLINGS)


def UNet(input_shape, num_classes, filters=64, depth=4, norm="batch", dropout=0.0,
         upsampling="transpose", output_activation="auto", name="unet"):
    """Builds the U-Net: a contracting path, a symmetric expanding path and concatenated skips.

    Each level holds two 3x3 convolutions (`kcv.layers.ConvBNAct`: convolution, `norm`, ReLU,
    named `<level>_conv1`, `<level>_conv2`); the encoder halves the resolution `depth` times
    with 2x2 max pooling while doubling the filters, the decoder upsamples `depth` times and
    concatenates the encoder features of the same resolution.
    Convolutions use `"same"` padding (the paper's valid padding crops the output; here output
    and input have the same size), and a 1x1 convolution gives `num_classes` channels.

    Args:
        input_shape: `(H, W, C)`; H and W must be divisible by `2**depth` (or `None`).
        num_classes: output channels. 1 means binary segmentation.
        filters: filters of the first level (doubled at each downsampling); the paper uses 64.
        depth: number of downsamplings (the paper: 4).
        norm: `"batch"`, `"group"` (8 groups, fewer for narrow layers), `"instance"`,
            `"layer"` or `None` after each convolution (see `kcv.layers.normalization`).
        dropout: dropout rate before the 1x1 classifier; 0 disables it. The paper drops out at
            the end of the contracting path, which in a network with batch norm shifts the
            normalization statistics between training and inference (Li et al., 2019); here
            dropout follows the last normalization.
        upsampling: `"transpose"` (2x2 transposed convolution, as the paper's up-convolution)
            or `"bilinear"` (bilinear resize then 1x1 convolution).
        output_activation: `"auto"` (softmax, or sigmoid when `num_classes == 1`), `None` for
            logits, or a Keras activation name. Computed in float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` mapping `[B, H, W, C]` images to `[B, H, W, num_classes]`.

    Example:
        >>> model = UNet((128, 128, 3), num_classes=4, filters=16)
        >>> model.output.shape
        (None, 128, 128, 4)

    Reference:
        Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
        Segmentation", MICCAI 2015; Li, Chen, Hu & Yang, "Understanding the Disharmony between
        Dropout and Batch Normalization by Variance Shift", CVPR 2019 (where dropout goes).
    """
    # === Validate ===
    _check_unet_args(num_classes, filters, depth, norm, upsampling)
    check_rate("dropout", dropout)
    check_input_shape(input_shape, 2**depth, f"2**depth = {2**depth} (the U-Net halves the "
                      f"resolution {depth} times)")

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = double_conv(x, filters * 2**level, norm, name=f"enc{level + 1}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = double_conv(x, filters * 2**depth, norm, name="bottleneck")
    for level in reversed(range(depth)):
        x = upsample(x, filters * 2**level, upsampling, name=f"dec{level + 1}")
        x = keras.layers.Concatenate(name=f"dec{level + 1}_concat")([skips[level], x])
        x = double_conv(x, filters * 2**level, norm, name=f"dec{level + 1}")
    if dropout:
        # After the last normalization, right before the classifier: dropout changes the
        # variance of what follows between training and inference, which would shift the
        # statistics of any batch norm after it (Li et al., CVPR 2019).
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = output_activation_layer(x, num_classes, output_activation)
    return keras.Model(inputs, x, name=name)
