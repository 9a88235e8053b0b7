"""Parameter counts by block and multiply-accumulate (MAC) counts of Keras models."""

import math
import re

import keras

_DEFAULT_BLOCK_PATTERN = r"^(.*?block_?\d+|\D*?_\d+|[^_]+)"


def _size(weights):
    return sum(math.prod(w.shape) for w in weights)


def count_params(model, by="block", pattern=_DEFAULT_BLOCK_PATTERN, trainable_only=False):
    """Counts a model's parameters, in total or grouped by block or by layer.

    Blocks are found from the layer names: the first match of `pattern` is the block's name. The
    default takes the name up to `block<n>` or `block_<n>` (ResNet `conv3_block2_1_conv` ->
    `conv3_block2`; MobileNetV2 `block_5_expand` -> `block_5`), else up to the first `_<n>`
    (MobileNet `conv_dw_3_bn` -> `conv_dw_3`), else the first `_`-separated word
    (`conv1_bn` -> `conv1`). Nested models count as one layer named after the model.

    Args:
        model: a built Keras model.
        by: `"block"` (a dict block -> count, in layer order), `"layer"` (a dict layer ->
            count, layers with weights only) or `"total"` (an int, what `model.count_params()`
            gives with `trainable_only=False`).
        pattern: regular expression whose first match in a layer name names its block.
        trainable_only: count trainable weights only (leaving out e.g. batch-norm moving
            statistics, which papers and torchvision do not count).

    Returns:
        An int for `by="total"`, else a dict of ints.

    Example:
        >>> count_params(kcv.models.ResNet18(), by="total", trainable_only=True)
        11689512
        >>> count_params(kcv.models.ResNet18(), by="block")["conv2_block1"]
        74240
    """
    if by not in ("block", "layer", "total"):
        raise ValueError(f"`by` must be 'block', 'layer' or 'total'. Received: by={by!r}")
    regex = re.compile(pattern)
    counts = {}
    for layer in model.layers:
        n = _size(layer.trainable_weights if trainable_only else layer.weights)
        if not n:
            continue
        if by == "block":
            match = regex.search(layer.name)
            key = match.group(0) if match else layer.name
        else:
            key = layer.name
        counts[key] = counts.get(key, 0) + n
    return sum(counts.values()) if by == "total" else counts


def _layer_macs(layer):
    """Multiply-accumulates of one layer per example (0 for layers without products)."""
    if isinstance(layer, keras.Model):
        return count_flops(layer)
    out = layer.output.shape
    if isinstance(layer, keras.layers.SeparableConv2D):
        in_ch = layer.input.shape[-1]
        k = math.prod(layer.kernel_size)
        # Depthwise at the output resolution, then pointwise from in_ch * depth_multiplier.
        return (math.prod(out[1:3]) * k * in_ch * layer.depth_multiplier
                + math.prod(out[1:]) * in_ch * layer.depth_multiplier)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return math.prod(out[1:]) * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        inp = layer.input.shape
        return math.prod(inp[1:]) * math.prod(layer.kernel_size) * layer.filters
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        in_ch = layer.input.shape[-1] // layer.groups
        return math.prod(out[1:]) * math.prod(layer.kernel_size) * in_ch
    if isinstance(layer, keras.layers.Dense):
        return math.prod(out[1:]) * layer.input.shape[-1]
    return 0


def count_flops(model, by_layer=False):
    """Multiply-accumulates (MACs) of one forward pass of one example, computed from the shapes.

    Counts the products of convolution and dense layers, the convention of the papers'
    "mult-adds" (MobileNet v1 1.0 at 224: 569M; MobileNet v2 1.0 at 224: 300M); biases,
    normalization, activations, pooling and additions are not counted. One MAC is two FLOPs.

    Per layer, with output size `H x W x C_out` and kernel `kh x kw`:
    Conv2D `H W C_out kh kw C_in / groups`; DepthwiseConv2D `H W C_out kh kw`; SeparableConv2D
    the depthwise plus the pointwise part; Conv2DTranspose `H_in W_in C_in kh kw C_out`;
    Dense `units * inputs` (per position for inputs with more than one axis).

    Args:
        model: a built Keras model with static spatial input sizes.
        by_layer: return a dict layer name -> MACs (layers with MACs only) instead of the total.

    Returns:
        An int (total MACs), or a dict.

    Raises:
        ValueError: a counted layer has an unknown (None) size other than the batch.

    Example:
        >>> count_flops(keras.applications.MobileNetV2(weights=None))  # about 300M
        300774272
    """
    counts = {}
    for layer in model.layers:
        try:
            macs = _layer_macs(layer)
        except TypeError as err:  # math.prod over None
            raise ValueError(
                f"count_flops needs static shapes; layer {layer.name!r} has input "
                f"{tuple(layer.input.shape)} and output {tuple(layer.output.shape)}."
            ) from err
        if macs:
            counts[layer.name] = int(macs)
    return counts if by_layer else sum(counts.values())
