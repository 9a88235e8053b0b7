"""Receptive field of a layer of a Keras functional model: size, jump and start offset per axis."""

import collections

import keras

from kcv.layers import ConvBNAct

ReceptiveField = collections.namedtuple("ReceptiveField", ["size", "jump", "start"])
ReceptiveField.__doc__ = """Receptive field of a feature map, per spatial axis `(height, width)`.

`size`: input pixels one unit sees; `jump`: input pixels between neighbouring units (the product
of the strides so far); `start`: input position (pixel index, first pixel = 0) of the centre of
the first unit's field, which padding can make negative and even windows fractional. After
upsampling, neighbouring units' fields alternate in size and spacing: `size` is then their mean
size and `start + o * jump` their mean centre over one period of the upsampling.
"""

# Layers that keep every spatial position to itself: the field passes through unchanged.
_POINTWISE = (
    keras.layers.InputLayer, keras.layers.BatchNormalization, keras.layers.LayerNormalization,
    keras.layers.GroupNormalization, keras.layers.ReLU, keras.layers.Activation,
    keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax,
    keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
    keras.layers.Rescaling, keras.layers.Normalization, keras.layers.Identity,
)
_MERGE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
          keras.layers.Maximum, keras.layers.Minimum, keras.layers.Concatenate)
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
# ConvBNAct: a convolution followed by position-wise normalization and activation.
_CONV = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
         ConvBNAct)


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _same_pad_begin(in_size, kernel, stride):
    """Padding TensorFlow puts before the data for "same" (the larger half goes after)."""
    if in_size is None:  # unknown size: assume a multiple of the stride, as the backbones need
        total = max(kernel - stride, 0)
    else:
        out = -(-in_size // stride)
        total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2


def _window(layer, axis):
    """(kernel, stride, dilation) of a sliding-window layer along `axis` (0 = height)."""
    if isinstance(layer, _POOLING):
        return _pair(layer.pool_size)[axis], _pair(layer.strides)[axis], 1
    return (_pair(layer.kernel_size)[axis], _pair(layer.strides)[axis],
            _pair(layer.dilation_rate)[axis])


def _step(layer, fields, in_size, axis):
    """The (size, jump, start) after `layer` along `axis`, from those of its inputs.

    The recurrence of Araujo et al. (2019): R_out = R_in + (k - 1) * J_in with the effective kernel
    k = d * (k - 1) + 1 of a dilated window, J_out = J_in * stride, and the centre moves by
    ((k - 1) / 2 - pad_before) * J_in.
    """
    if isinstance(layer, _MERGE):
        # The envelope of the branches' fields (the largest one when they are centred alike).
        jumps = {f[1] for f in fields}
        if len(jumps) != 1:
            raise ValueError(f"Layer {layer.name!r} merges feature maps with different jumps "
                             f"{sorted(jumps)}; their receptive fields are not comparable.")
        lo = min(start - (size - 1) / 2 for size, _, start in fields)
        hi = max(start + (size - 1) / 2 for size, _, start in fields)
        return hi - lo + 1, fields[0][1], (lo + hi) / 2
    (size, jump, start), = fields
    if isinstance(layer, _POINTWISE):
        return size, jump, start
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return size, jump, start - layer.padding[axis][0] * jump
    if isinstance(layer, keras.layers.Cropping2D):
        return size, jump, start + layer.cropping[axis][0] * jump
    # Upsampling: neighbouring outputs see different numbers of input units, so their fields
    # alternate in size and are not evenly spaced. The size and centre given are their means
    # over one period of s outputs (exact for the mean; one unit's field may be larger).
    if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation in ("nearest",
                                                                                 "bilinear"):
        # Nearest: output o copies input o // s. Bilinear (half-pixel centres): output o reads
        # input coordinate (o + 0.5) / s - 0.5, i.e. the two input units around it, except the
        # one output in s (odd s) that lands on an input unit. Either way the centre is, on
        # average, (o + 0.5) / s - 0.5 input units.
        factor = _pair(layer.size)[axis]
        grow = (1 - (factor % 2) / factor) * jump if layer.interpolation == "bilinear" else 0
        return size + grow, jump / factor, start + (0.5 / factor - 0.5) * jump
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Output o = i * s + t - pad for kernel taps t: on average k / s input units reach an
        # output, centred (o + pad - (k - 1) / 2) / s input units along.
        kernel, stride = _pair(layer.kernel_size)[axis], _pair(layer.strides)[axis]
        if (_pair(layer.dilation_rate)[axis] != 1 or layer.output_padding is not None
                or kernel < stride):
            raise ValueError(f"Layer {layer.name!r}: receptive_field supports Conv2DTranspose "
                             f"with kernel_size >= strides, no dilation and no output_padding; "
                             f"it has kernel_size={layer.kernel_size}, "
                             f"strides={layer.strides}, dilation_rate={layer.dilation_rate}, "
                             f"output_padding={layer.output_padding}.")
        pad = (kernel - stride) // 2 if layer.padding == "same" else 0
        return (size + (kernel / stride - 1) * jump, jump / stride,
                start + (pad - (kernel - 1) / 2) / stride * jump)
    if isinstance(layer, _CONV + _POOLING):
        kernel, stride, dilation = _window(layer, axis)
        k = dilation * (kernel - 1) + 1
        pad = _same_pad_begin(in_size, k, stride) if layer.padding == "same" else 0
        return size + (k - 1) * jump, jump * stride, start + ((k - 1) / 2 - pad) * jump
    raise ValueError(
        f"receptive_field does not know how layer {layer.name!r} ({type(layer).__name__}) maps "
        "positions. Supported: Conv2D, DepthwiseConv2D, SeparableConv2D, kcv.layers.ConvBNAct, "
        "Max/AveragePooling2D, "
        "ZeroPadding2D, Cropping2D, UpSampling2D (nearest, bilinear), Conv2DTranspose, merge "
        "layers (Add, Concatenate, ...) and position-wise layers (normalization, activations, "
        "dropout)."
    )


def _inbound(layer):
    """The layers whose outputs `layer` takes as inputs (a layer called once)."""
    if isinstance(layer, keras.layers.InputLayer):
        return []
    return [t._keras_history[0] for t in keras.tree.flatten(layer.input)]


def _number(value):
    return int(value) if float(value).is_integer() else float(value)


def receptive_field(model, layer_name=None, verbose=False):
    """Receptive field of a layer's output in a Keras functional model.

    Walks the model's layers in graph order and applies, along each spatial axis, the
    recurrence R(n+1) = R(n) + (k(n+1) - 1) * prod(strides so far), with the effective kernel
    d(k - 1) + 1 of a dilation rate d, through convolutions (plain, depthwise, separable, and
    `kcv.layers.ConvBNAct`), pooling, zero padding and cropping; upsampling (nearest,
    bilinear, transposed convolution) divides the jump; its outputs' fields alternate in size
    and spacing, so the size and start after it are their means over one period of outputs.
    Merge layers (`Add`, `Concatenate`, ...) take the envelope of their branches' fields (the
    largest one when the branches are centred alike, as in residual networks). "same" padding
    is resolved from the layer's static input size
    (TensorFlow pads the extra pixel after the data).

    Args:
        model: a Keras functional model (each layer called once; nested models unsupported).
        layer_name: the layer whose output to describe; `None` takes the last layer with a
            spatial (4-D) output.
        verbose: print a per-layer table (name, type, effective kernel, stride, size, jump,
            start; height axis) of the layers up to `layer_name`.

    Returns:
        A `ReceptiveField(size, jump, start)` of `(height, width)` pairs: field size in input
        pixels, jump (cumulative stride) between neighbouring units, and the input position
        (pixel index, first pixel = 0) of the centre of the first unit's field.

    Raises:
        ValueError: `layer_name` is not in the model or has no spatial output, or a layer on
            the way is one whose effect on positions is unknown (the message names it).

    Example:
        >>> vgg = keras.applications.VGG16(weights=None, include_top=False)
        >>> receptive_field(vgg, "block5_pool")
        ReceptiveField(size=(212, 212), jump=(32, 32), start=(15.5, 15.5))

    Reference:
        Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks",
        Distill, 2019.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(f"`model` must be a Keras functional model. Received: model={model!r}")
    layers = model.layers
    if layer_name is None:
        spatial = [layer for layer in layers if len(layer.output.shape) == 4]
        if not spatial:
            raise ValueError(f"The model {model.name!r} has no layer with a 4-D output.")
        layer_name = spatial[-1].name
    names = [layer.name for layer in layers]
    if layer_name not in names:
        raise ValueError(f"`layer_name` is not a layer of {model.name!r}. "
                         f"Received: layer_name={layer_name!r}")
    target = model.get_layer(layer_name)
    if len(target.output.shape) != 4:
        raise ValueError(f"`layer_name` must name a layer with a spatial (4-D) output; "
                         f"{layer_name!r} outputs shape {tuple(target.output.shape)}.")

    # Only the layers `target` depends on.
    needed, todo = set(), [target]
    while todo:
        layer = todo.pop()
        if layer.name not in needed:
            needed.add(layer.name)
            todo.extend(_inbound(layer))

    fields, rows = {}, []
    for layer in layers:
        if layer.name not in needed:
            continue
        parents = _inbound(layer)
        if not parents:
            fields[layer.name] = ((1, 1, 0), (1, 1, 0))
        else:
            in_shape = tuple(keras.tree.flatten(layer.input)[0].shape)
            fields[layer.name] = tuple(
                _step(layer, [fields[p.name][axis] for p in parents], in_shape[1 + axis], axis)
                for axis in (0, 1)
            )
        if verbose:
            window = _window(layer, 0) if isinstance(layer, _CONV + _POOLING) else None
            rows.append((layer.name, type(layer).__name__,
                         "" if window is None else window[2] * (window[0] - 1) + 1,
                         "" if window is None else window[1],
                         *(_number(v) for v in fields[layer.name][0])))
        if layer.name == layer_name:
            break
    if verbose:
        header = ("layer", "type", "k_eff", "stride", "size", "jump", "start")
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    height, width = fields[layer_name]
    return ReceptiveField(*((_number(h), _number(w)) for h, w in zip(height, width)))
