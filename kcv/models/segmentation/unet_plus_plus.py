"""UNet++ (Zhou et al., 2018): nested dense skip pathways, deep supervision and pruning."""

import keras

from kcv.models._blocks import double_conv, output_activation_layer, upsample
from kcv.models._checks import check_input_shape
from kcv.models.segmentation.unet import _check_unet_args


def _node_name(i, j):
    return f"x{i}{j}" if max(i, j) < 10 else f"x{i}_{j}"


def UNetPlusPlus(input_shape, num_classes, filters=32, depth=4, deep_supervision=True,
                 norm="batch", upsampling="transpose", output_activation="auto",
                 name="unet_plus_plus"):
    """Builds UNet++: a U-Net whose skips are nested, densely connected convolution blocks.

    Node `X(i, j)` sits at resolution level `i` (`i` halvings) and column `j`. The backbone
    column `X(i, 0)` is the U-Net encoder (two 3x3 convolutions, 2x2 max pooling between
    levels). Every other node concatenates all earlier nodes of its level with the upsampled
    node below-left and applies two 3x3 convolutions:

        X(i, j) = H([X(i, 0), ..., X(i, j - 1), Up(X(i + 1, j - 1))])

    so the network holds `(depth + 1) * (depth + 2) / 2` nodes. The top row `X(0, 1..depth)`
    ends in 1x1 convolution heads. With `deep_supervision=True` the model outputs all `depth`
    heads (named `level1` ... `level<depth>`), which are trained on the mean of their losses
    (the paper: binary cross-entropy + Dice on each), and `prune(model, level)` cuts the
    trained network to the sub-network ending at one head (the paper's fast mode). Without
    deep supervision only the last head `level<depth>` is an output.

    Args:
        input_shape: `(H, W, C)`; H and W divisible by `2**depth` (or `None`).
        num_classes: output channels per head. 1 means binary segmentation.
        filters: filters at level 0, doubled at each level (the paper: 32, 64, ..., 512).
        depth: number of downsamplings, which is also the number of heads (the paper: 4).
        deep_supervision: output every head `X(0, 1..depth)` (a list) or only the last one.
        norm: `"batch"`, `"group"`, `"instance"`, `"layer"` or `None` after each 3x3
            convolution (`kcv.layers.ConvBNAct` units, as in `UNet`; the paper's code uses
            none; batch norm trains faster at these sizes).
        upsampling: `"transpose"` (2x2 transposed convolution, as the paper) or `"bilinear"`
            (bilinear resize then 1x1 convolution).
        output_activation: `"auto"` (softmax, or sigmoid when `num_classes == 1`), `None` for
            logits, or a Keras activation name; computed in float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` images to a list of `depth` tensors
        `[B, H, W, num_classes]` (heads 1..depth) with deep supervision, else one tensor.

    Example:
        >>> model = UNetPlusPlus((32, 32, 1), num_classes=1, filters=8, depth=3)
        >>> [head.shape for head in model.outputs]
        [(None, 32, 32, 1), (None, 32, 32, 1), (None, 32, 32, 1)]
        >>> model.compile("adam", loss=["binary_crossentropy"] * 3, loss_weights=[1 / 3] * 3)
        >>> fast = prune(model, 2)  # inference network ending at head X(0, 2)
        >>> fast.output.shape
        (None, 32, 32, 1)

    Reference:
        Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for
        Medical Image Segmentation", DLMIA 2018 (arXiv:1807.10165).
    """
    # === Validate ===
    _check_unet_args(num_classes, filters, depth, norm, upsampling)
    check_input_shape(input_shape, 2**depth, f"2**depth = {2**depth} (UNet++ halves the "
                      f"resolution {depth} times)")

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    nodes = {}
    x = inputs
    for i in range(depth + 1):  # backbone column X(i, 0)
        if i:
            x = keras.layers.MaxPooling2D(2, name=f"{_node_name(i - 1, 0)}_pool")(x)
        x = double_conv(x, filters * 2**i, norm, name=_node_name(i, 0))
        nodes[i, 0] = x
    for j in range(1, depth + 1):  # nested columns, left to right
        for i in range(depth + 1 - j):
            node = _node_name(i, j)
            up = upsample(nodes[i + 1, j - 1], filters * 2**i, upsampling, name=node)
            same_level = [nodes[i, k] for k in range(j)]
            x = keras.layers.Concatenate(name=f"{node}_concat")([*same_level, up])
            nodes[i, j] = double_conv(x, filters * 2**i, norm, name=node)
    heads = []
    for j in range(1 if deep_supervision else depth, depth + 1):
        y = keras.layers.Conv2D(num_classes, 1, name=f"head{j}")(nodes[0, j])
        y = output_activation_layer(y, num_classes, output_activation, name=f"level{j}")
        heads.append(y)
    return keras.Model(inputs, heads if deep_supervision else heads[0], name=name)


def prune(model, level):
    """The inference model of a trained UNet++ that stops at head `level` (the fast mode).

    Head `X(0, L)` depends only on the nodes `X(i, j)` with `i + j <= L`, so the network up to
    it is a UNet++ of depth `L`; the pruned model shares the trained layers (and weights) of
    `model` and computes exactly what `model`'s head `L` computes, with fewer parameters and
    less time. The paper trades a little accuracy for speed this way (its Fig. 4).

    Args:
        model: a model built by `UNetPlusPlus` (with `deep_supervision=True` for levels below
            its depth), possibly reloaded from `.keras`.
        level: the head to keep, `1 <= level <= depth`.

    Returns:
        A `keras.Model` from the images to `[B, H, W, num_classes]` (the output `level<L>`).

    Example:
        >>> model = UNetPlusPlus((32, 32, 1), num_classes=1, filters=8, depth=3)
        >>> fast = prune(model, 2)
        >>> fast.count_params() < model.count_params()
        True

    Reference:
        Zhou et al., "UNet++", DLMIA 2018, section 2 ("Model pruning").
    """
    names = [layer.name for layer in model.layers]
    heads = sorted(int(n[5:]) for n in names if n.startswith("level") and n[5:].isdigit())
    if not heads:
        raise ValueError(
            "`model` must be a UNet++ built by `UNetPlusPlus` (no `level<L>` output layers). "
            f"Received: model={model.name!r}"
        )
    if isinstance(level, bool) or not isinstance(level, int) or level not in heads:
        raise ValueError(
            f"`level` must be one of the model's heads {heads}. Received: level={level!r}"
        )
    output = model.get_layer(f"level{level}").output
    return keras.Model(model.input, output, name=f"{model.name}_l{level}")
