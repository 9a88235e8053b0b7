"""Model surgery: rebuilding a functional Keras model with changed layer settings."""

import copy

import keras

from kcv.layers._checks import check_int_or_pair, check_positive_int


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
    """Rebuilds a functional CNN so that it downsamples by at most `output_stride` (atrous).

    Walking the layers in order and tracking the accumulated stride, every strided layer that
    would take the stride beyond `output_stride` gets stride 1, and the layers after it get a
    dilation rate multiplied by the removed stride (the strided layer itself keeps the rate
    before it), which keeps each layer's field of view: the atrous ("dilated") backbone of
    DeepLab. On the grid of the removed strides the rebuilt network computes exactly what the
    original computes; in between it fills in the outputs the strides skipped. Layers with
    `valid` padding that lose their stride switch to `same` and the `ZeroPadding2D` in front
    of them is emptied (keras.applications pads explicitly before strided convolutions).

    Works on layers whose config holds `strides` (and `dilation_rate`): Keras convolutions and
    pooling, and kcv blocks such as `kcv.layers.ConvBNAct` or `InvertedResidual`. The weights
    are copied over; the model is rebuilt from its config, so its layers must be serializable.

    Args:
        model: a functional `keras.Model` (built).
        output_stride: the largest accumulated stride to keep (a power of two, e.g. 8 or 16).
        bn_momentum: when given, also the momentum of every `BatchNormalization` layer (a
            training setting: keras.applications' MobileNetV2 uses 0.999, whose moving
            statistics need thousands of steps to settle when training from scratch).

    Returns:
        A new functional model with the same weights, name and outputs.

    Example:
        >>> net = kcv.models.MobileNetV2((64, 64, 3), alpha=0.35, include_top=False)
        >>> net.output.shape
        (None, 2, 2, 1280)
        >>> atrous = dilate(net, output_stride=8)
        >>> atrous.output.shape
        (None, 8, 8, 1280)
        >>> atrous.get_layer("block_16_depthwise").dilation_rate
        (4, 4)

    Reference:
        Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
        arXiv:1706.05587, 2017, section 3.1 (going deeper with atrous convolution).
    """
    check_positive_int("output_stride", output_stride)
    if output_stride & (output_stride - 1):
        raise ValueError(f"`output_stride` must be a power of two. "
                         f"Received: output_stride={output_stride!r}")
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(f"`model` must be a functional Keras model. Received: model={model!r}")
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
        step = check_int_or_pair("strides", cfg["strides"])[0] if cfg.get("strides") else 1
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
        stride[name] = in_stride * step
        rate[name] = out_rate
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
