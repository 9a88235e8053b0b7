"""Parameter counts by block and multiply-accumulate (MAC) counts of Keras models (kcv blocks
included)."""

import math
import re

import keras
import tensorflow as tf

from kcv.layers import DeformableConv2D

_COUNTED = (keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D,
            keras.layers.Conv2DTranspose, keras.layers.Conv1D, keras.layers.Conv2D,
            keras.layers.Conv3D, keras.layers.Dense, DeformableConv2D)
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


def _sublayers(layer):
    """The layers directly inside `layer`: a model's layers, else the `Layer` attributes
    (alone or in lists) that kcv's blocks build their computation from."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    found = []
    for value in vars(layer).values():
        values = value if isinstance(value, (list, tuple)) else [value]
        found += [v for v in values if isinstance(v, keras.layers.Layer)]
    return found


def _layer_macs(layer, inputs, outputs):
    """Multiply-accumulates of one call of a layer on one example (0 without products)."""
    inp, out = tuple(inputs.shape), tuple(outputs.shape)
    if isinstance(layer, keras.layers.SeparableConv2D):
        k = math.prod(layer.kernel_size)
        hidden = inp[-1] * layer.depth_multiplier
        # Depthwise at the output resolution, then pointwise from in_ch * depth_multiplier.
        return math.prod(out[1:3]) * k * hidden + math.prod(out[1:]) * hidden
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return math.prod(out[1:]) * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return math.prod(inp[1:]) * math.prod(layer.kernel_size) * layer.filters
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return math.prod(out[1:]) * math.prod(layer.kernel_size) * (inp[-1] // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        return math.prod(out[1:]) * inp[-1]
    if isinstance(layer, DeformableConv2D):  # its own kernel [kh, kw, C_in / groups, C_out]
        return math.prod(out[1:-1]) * math.prod(layer.kernel.shape)
    return 0


def count_macs(model, by_layer=False):
    """Multiply-accumulates (MACs) of one forward pass of one example, computed from the shapes.

    Counts the products of the convolution and dense layers, the convention of the papers'
    "mult-adds" (MobileNet v1 1.0 at 224: 569M; MobileNet v2 1.0 at 224: 300M); biases,
    normalization, activations, pooling, resizing and additions are not counted. One MAC is
    two FLOPs. Layers inside other layers count too: nested models, and kcv's blocks
    (`kcv.layers.ConvBNAct`, `InvertedResidual`, `BasicBlock`, `ASPP`, `CBAM`, ...), whose
    convolutions are found among their attributes and measured while the model is traced
    once (a `tf.function` trace at batch size 1: no arithmetic is run).

    Per call of a layer, with output size `H x W x C_out` and kernel `kh x kw`:
    Conv2D `H W C_out kh kw C_in / groups` (Conv1D/3D alike); DepthwiseConv2D
    `H W C_out kh kw`; SeparableConv2D the depthwise plus the pointwise part; Conv2DTranspose
    `H_in W_in C_in kh kw C_out`; Dense `units * inputs` (per position for inputs with more
    than one axis); `kcv.layers.DeformableConv2D` `H W C_out kh kw C_in / groups` plus its
    offset convolution (the bilinear sampling is not counted).

    Args:
        model: a built Keras functional model with static input sizes (but the batch).
        by_layer: return a dict, for each of the model's own layers with MACs, its MACs
            (a kcv block or nested model counts as one entry, named after it).

    Returns:
        An int (total MACs), or a dict layer name -> int.

    Raises:
        ValueError: a counted layer has an unknown (None) size other than the batch.

    Example:
        >>> count_macs(kcv.models.MobileNetV2((224, 224, 3)))  # Sandler et al.: 300M
        300774272
        >>> x = keras.Input((32, 32, 3))
        >>> y = kcv.layers.ConvBNAct(16, 3, strides=2, name="stem")(x)
        >>> count_macs(keras.Model(x, y), by_layer=True)  # 16 * 16 * 16 * 3 * 3 * 3
        {'stem': 110592}
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(f"`model` must be a built Keras functional model. "
                         f"Received: model={model!r}")
    owners, todo = {}, [(layer, layer.name) for layer in model.layers]
    while todo:
        layer, owner = todo.pop()
        if id(layer) in owners:
            continue
        owners[id(layer)] = (layer, owner)
        todo += [(sub, owner) for sub in _sublayers(layer)]
    counts = {}

    def counting(layer, owner):
        call = layer.call

        def counted_call(inputs, *args, **kwargs):
            outputs = call(inputs, *args, **kwargs)
            try:
                macs = _layer_macs(layer, inputs, outputs)
            except TypeError as err:  # math.prod over None
                raise ValueError(
                    f"count_macs needs static shapes; layer {layer.name!r} has input "
                    f"{tuple(inputs.shape)} and output {tuple(outputs.shape)}."
                ) from err
            counts[owner] = counts.get(owner, 0) + int(macs)
            return outputs

        return counted_call

    wrapped = [layer for layer, _ in owners.values() if isinstance(layer, _COUNTED)]
    specs = keras.tree.map_structure(
        lambda t: tf.TensorSpec((1, *t.shape[1:]), t.dtype), model.input)
    try:
        for layer in wrapped:
            layer.call = counting(layer, owners[id(layer)][1])
        tf.function(lambda x: model(x, training=False), autograph=False).get_concrete_function(
            specs)
    finally:
        for layer in wrapped:
            del layer.call  # the class's own method again
    counts = {name: n for name, n in counts.items() if n}
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    counts = dict(sorted(counts.items(), key=lambda item: order[item[0]]))
    return counts if by_layer else sum(counts.values())
