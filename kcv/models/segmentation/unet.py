"""U-Net (Ronneberger et al., 2015) as a Keras functional model."""

import keras

from kcv.layers.normalization import normalization
from kcv.models.segmentation._checks import (
    check_input_shape,
    check_positive_ints,
    output_activation_layer,
)

_UPSAMPLING = ("transpose", "bilinear")
_NORMS = ("batch", "group", "instance", None)


def _conv_block(x, filters, norm, name):
    """Two 3x3 convolutions, each followed by normalization and ReLU."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=norm is None,
                                kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        layer = normalization(norm, groups=_groups(filters), channels=filters,
                              name=f"{name}_norm{i}")
        if layer is not None:
            x = layer(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _groups(filters):
    """Group count for group norm: 8 groups (or fewer for narrow layers), dividing `filters`."""
    for g in (8, 4, 2, 1):
        if filters % g == 0:
            return g
    return 1


def UNet(input_shape, num_classes, filters=64, depth=4, norm="batch", dropout=0.0,
         upsampling="transpose", output_activation="auto", name="unet"):
    """Builds the U-Net: a contracting path, a symmetric expanding path and concatenated skips.

    Each level holds two 3x3 convolutions (with `norm` and ReLU); the encoder halves the
    resolution `depth` times with 2x2 max pooling while doubling the filters, the decoder
    upsamples `depth` times and concatenates the encoder features of the same resolution.
    Convolutions use `"same"` padding (the paper's valid padding crops the output; here output
    and input have the same size), and a 1x1 convolution gives `num_classes` channels.

    Args:
        input_shape: `(H, W, C)`; H and W must be divisible by `2**depth` (or `None`).
        num_classes: output channels. 1 means binary segmentation.
        filters: filters of the first level (doubled at each downsampling); the paper uses 64.
        depth: number of downsamplings (the paper: 4).
        norm: `"batch"`, `"group"`, `"instance"` or `None` after each convolution.
        dropout: dropout rate applied at the two deepest levels (the paper drops out at the
            end of the contracting path); 0 disables it.
        upsampling: `"transpose"` (2x2 transposed convolution, as the paper's up-convolution)
            or `"bilinear"` (bilinear resize then 1x1 convolution).
        output_activation: `"auto"` (softmax, or sigmoid when `num_classes == 1`), `None` for
            logits, or a Keras activation name. Computed in float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` mapping `[B, H, W, C]` images to `[B, H, W, num_classes]`.

    Example:
        >>> model = UNet((128, 128, 3), num_classes=4, filters=16)
        >>> model.compile("adam", kcv.losses.DiceLoss())

    Reference:
        Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
        Segmentation", MICCAI 2015.
    """
    # === Validate ===
    check_positive_ints(depth=depth, filters=filters, num_classes=num_classes)
    if norm not in _NORMS:
        raise ValueError(f"`norm` must be one of {_NORMS}. Received: norm={norm!r}")
    if upsampling not in _UPSAMPLING:
        raise ValueError(f"`upsampling` must be one of {_UPSAMPLING}. Received: upsampling={upsampling!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    check_input_shape(input_shape, 2**depth, f"2**depth = {2**depth} (the U-Net halves the "
                      f"resolution {depth} times)")

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _conv_block(x, filters * 2**level, norm, name=f"enc{level + 1}")
        if dropout and level == depth - 1:
            x = keras.layers.Dropout(dropout, name=f"enc{level + 1}_dropout")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = _conv_block(x, filters * 2**depth, norm, name="bottleneck")
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        f = filters * 2**level
        if upsampling == "transpose":
            x = keras.layers.Conv2DTranspose(f, 2, strides=2, name=f"dec{level + 1}_upconv")(x)
        else:
            x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level + 1}_up")(x)
            x = keras.layers.Conv2D(f, 1, name=f"dec{level + 1}_upconv")(x)
        x = keras.layers.Concatenate(name=f"dec{level + 1}_concat")([skips[level], x])
        x = _conv_block(x, f, norm, name=f"dec{level + 1}")
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = output_activation_layer(x, num_classes, output_activation)
    return keras.Model(inputs, x, name=name)
