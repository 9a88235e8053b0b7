"""torchvision's ResNet (v1.5 bottlenecks) layer for layer, to load torchvision state dicts.

kcv's own `ResNet50` follows keras.applications (stride in the first 1x1 convolution, biased
convolutions, TensorFlow "same" padding); torchvision's differs in all three, so a ported
checkpoint needs this network: 7x7/2 stem convolution without bias padded by 3, 3x3/2 max
pooling padded by 1, bottlenecks `1x1 -> 3x3 (stride) -> 1x1` without biases, the stride in
the 3x3 convolution ("ResNet v1.5"), PyTorch's symmetric zero padding made explicit with
`ZeroPadding2D` before "valid" convolutions (TensorFlow's "same" pads the bottom/right side
only for stride 2), and torchvision's `FrozenBatchNorm2d` after every convolution.

Layer names are torchvision's parameter names with dots as underscores (`layer2_0_conv2`,
`layer2_0_downsample_1`), so `load_torchvision_resnet` maps keys by name.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from kcv.layers._checks import check_positive_int


@keras.saving.register_keras_serializable(package="kcv")
class FrozenBatchNormalization(keras.layers.Layer):
    """torchvision's `FrozenBatchNorm2d`: batch normalization with fixed statistics.

    Formula: `scale = gamma * rsqrt(moving_variance + epsilon)`,
    `y = x * scale + (beta - moving_mean * scale)` over the last axis, in the order torchvision
    computes it. All four vectors are non-trainable (torchvision keeps them as buffers);
    torchvision's eval-mode `BatchNorm2d` computes the same expression.

    Args:
        epsilon: added to the variance. torchvision's default is 1e-5; its builder overwrites
            it to 0.0 for the `fasterrcnn_resnet50_fpn` COCO_V1 weights.
        **kwargs: base `Layer` arguments.

    Example:
        >>> bn = FrozenBatchNormalization(epsilon=0.0)
        >>> bn.build((None, 2))
        >>> bn.set_weights([np.array([2.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0]),
        ...                 np.array([4.0, 1.0])])
        >>> bn(np.array([[3.0, 5.0]])).numpy()  # (3 - 1) * 2 / 2, 5 * 1 + 1
        array([[2., 6.]], dtype=float32)

    Reference:
        Ioffe & Szegedy, "Batch Normalization", ICML 2015; torchvision.ops.FrozenBatchNorm2d.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or epsilon < 0:
            raise ValueError(f"`epsilon` must be a number >= 0. Received: epsilon={epsilon!r}")
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("FrozenBatchNormalization needs a known last axis. "
                             f"Received: input_shape={input_shape}")
        for name, init in (("gamma", "ones"), ("beta", "zeros"), ("moving_mean", "zeros"),
                           ("moving_variance", "ones")):
            setattr(self, name, self.add_weight(name=name, shape=(channels,), initializer=init,
                                                trainable=False))

    def call(self, inputs):
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        bias = self.beta - self.moving_mean * scale
        return inputs * scale + bias

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _conv_bn(x, filters, kernel, stride, name, bn_name, epsilon, dtype):
    pad = kernel // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad", dtype=dtype)(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name,
                            dtype=dtype)(x)
    return FrozenBatchNormalization(epsilon, name=bn_name, dtype=dtype)(x)


def _bottleneck(x, width, out_filters, stride, name, epsilon, dtype):
    shortcut = x
    y = _conv_bn(x, width, 1, 1, f"{name}_conv1", f"{name}_bn1", epsilon, dtype)
    y = keras.layers.ReLU(name=f"{name}_relu1", dtype=dtype)(y)
    y = _conv_bn(y, width, 3, stride, f"{name}_conv2", f"{name}_bn2", epsilon, dtype)
    y = keras.layers.ReLU(name=f"{name}_relu2", dtype=dtype)(y)
    y = _conv_bn(y, out_filters, 1, 1, f"{name}_conv3", f"{name}_bn3", epsilon, dtype)
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = _conv_bn(x, out_filters, 1, stride, f"{name}_downsample_0",
                            f"{name}_downsample_1", epsilon, dtype)
    y = keras.layers.Add(name=f"{name}_add", dtype=dtype)([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out", dtype=dtype)(y)


def torchvision_resnet(blocks_per_stage=(3, 4, 6, 3), stem_filters=64,
                       stage_widths=(64, 128, 256, 512), expansion=4, epsilon=1e-5,
                       input_shape=(None, None, 3), dtype=None, name="torchvision_resnet"):
    """torchvision's bottleneck ResNet (ResNet-50 by default) returning the C2..C5 maps.

    Args:
        blocks_per_stage: bottlenecks of `layer1`..`layer4` (`(3, 4, 6, 3)`: ResNet-50).
        stem_filters: output channels of `conv1` (64).
        stage_widths: 3x3 widths of the four stages (64, 128, 256, 512); a stage outputs
            `expansion` times its width.
        expansion: bottleneck expansion (4).
        epsilon: FrozenBatchNorm epsilon (1e-5; 0.0 for the v1 COCO detection weights).
        input_shape: `(H, W, 3)`, NHWC (any size by default).
        dtype: dtype of every layer (e.g. "float64"; default: the global policy).
        name: model name.

    Returns:
        A functional `keras.Model` with outputs `[C2, C3, C4, C5]` (strides 4, 8, 16, 32),
        the outputs of torchvision's `layer1`..`layer4`.

    Example:
        >>> m = torchvision_resnet((1, 1, 1, 1), 8, (4, 8, 16, 32), input_shape=(64, 64, 3))
        >>> [tuple(o.shape) for o in m.outputs]
        [(None, 16, 16, 16), (None, 8, 8, 32), (None, 4, 4, 64), (None, 2, 2, 128)]

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
        torchvision.models.resnet (stride in the 3x3 convolution).
    """
    blocks_per_stage, stage_widths = tuple(blocks_per_stage), tuple(stage_widths)
    if len(blocks_per_stage) != 4 or len(stage_widths) != 4:
        raise ValueError("`blocks_per_stage` and `stage_widths` need four entries. Received: "
                         f"blocks_per_stage={blocks_per_stage!r}, stage_widths={stage_widths!r}")
    for value in (*blocks_per_stage, *stage_widths):
        check_positive_int("blocks_per_stage/stage_widths", value)
    check_positive_int("stem_filters", stem_filters)
    check_positive_int("expansion", expansion)
    inputs = keras.Input(input_shape, dtype=dtype, name="images")
    x = _conv_bn(inputs, stem_filters, 7, 2, "conv1", "bn1", epsilon, dtype)
    x = keras.layers.ReLU(name="relu", dtype=dtype)(x)
    # Zero padding equals PyTorch's -inf padding here: the inputs are ReLU outputs (>= 0).
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad", dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool", dtype=dtype)(x)
    outputs = []
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, stage_widths)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _bottleneck(x, width, width * expansion, stride, f"layer{stage + 1}_{block}",
                            epsilon, dtype)
        outputs.append(x)
    return keras.Model(inputs, outputs, name=name)


def resnet_weight_map(model, prefix=""):
    """`{torchvision key: (keras variable, kind)}` for a `torchvision_resnet` model.

    `kind` is "conv" (PyTorch `[out, in, kh, kw]` vs Keras `[kh, kw, in, out]`) or "vector".

    Args:
        model: a model from `torchvision_resnet` (or a model containing its layers by name).
        prefix: prefix of the torchvision keys (e.g. "backbone.body.").
    """
    mapping = {}
    bn_keys = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
               ("running_var", "moving_variance"))
    for layer in model.layers:
        key = prefix + layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            mapping[key + ".weight"] = (layer.kernel, "conv")
            if layer.use_bias:
                mapping[key + ".bias"] = (layer.bias, "vector")
        elif isinstance(layer, FrozenBatchNormalization):
            for torch_name, attr in bn_keys:
                mapping[f"{key}.{torch_name}"] = (getattr(layer, attr), "vector")
    return mapping


def resnet_config_from_state_dict(state_dict, prefix=""):
    """`torchvision_resnet` arguments read from a state dict's shapes and keys.

    Returns a dict with `blocks_per_stage`, `stem_filters`, `stage_widths` and `expansion`.
    """
    def shape(key):
        if prefix + key not in state_dict:
            raise ValueError(f"The state dict has no `{prefix + key}`: not a torchvision "
                             "ResNet with bottlenecks.")
        return tuple(np.shape(state_dict[prefix + key]))

    blocks = []
    for stage in range(1, 5):
        n = 0
        while f"{prefix}layer{stage}.{n}.conv1.weight" in state_dict:
            n += 1
        blocks.append(n)
    if min(blocks) == 0:
        raise ValueError(f"The state dict lacks blocks of `{prefix}layer1..4` (found "
                         f"{blocks} blocks per stage).")
    widths = tuple(shape(f"layer{s}.0.conv2.weight")[0] for s in range(1, 5))
    expansion = shape("layer1.0.conv3.weight")[0] // widths[0]
    return {"blocks_per_stage": tuple(blocks), "stem_filters": shape("conv1.weight")[0],
            "stage_widths": widths, "expansion": expansion}


def resnet_from_torchvision(state_dict, prefix="", epsilon=1e-5, dtype="float32",
                            input_shape=(None, None, 3)):
    """A `torchvision_resnet` (C2..C5) with the weights of a torchvision ResNet state dict.

    For fine-tuning from torchvision's ImageNet weights (e.g. `resnet50` IMAGENET1K_V1, keys
    `conv1.weight`, `layer1.0.bn1.running_mean`, ...; `prefix=""`) or from a detector's
    backbone (`prefix="backbone.body."`). The classifier (`fc.weight`, `fc.bias`) and BatchNorm
    `num_batches_tracked` counters are ignored; any other unused or missing key raises a
    `ValueError` listing them. Depth and widths are read from the state dict.

    Args:
        state_dict: mapping from torchvision names to arrays (NumPy or torch).
        prefix: prefix of the ResNet's keys.
        epsilon: batch-norm epsilon (1e-5, torchvision's `BatchNorm2d`; 0.0 for the v1 COCO
            detector's backbone).
        dtype: "float32" or "float64".
        input_shape: `(H, W, 3)`.

    Returns:
        The `keras.Model` of `torchvision_resnet`, weights assigned.

    Example:
        >>> tiny = torchvision_resnet((1, 1, 1, 1), 8, (4, 8, 16, 32))
        >>> sd = {k: np.transpose(v.numpy(), (3, 2, 0, 1)) if v.ndim == 4 else v.numpy()
        ...       for k, (v, _) in resnet_weight_map(tiny).items()}
        >>> model = resnet_from_torchvision({**sd, "fc.weight": np.zeros((10, 128))})
        >>> [o.shape[-1] for o in model.outputs]
        [16, 32, 64, 128]
    """
    state = {k: v for k, v in state_dict.items() if k.startswith(prefix)
             and not k.endswith("num_batches_tracked")
             and k not in (f"{prefix}fc.weight", f"{prefix}fc.bias")}
    model = torchvision_resnet(**resnet_config_from_state_dict(state, prefix), epsilon=epsilon,
                               input_shape=input_shape, dtype=dtype)
    mapping = resnet_weight_map(model, prefix)
    missing, unused = sorted(set(mapping) - set(state)), sorted(set(state) - set(mapping))
    if missing or unused:
        raise ValueError(f"The state dict does not match a torchvision ResNet. Missing keys "
                         f"({len(missing)}): {missing}. Unused keys ({len(unused)}): {unused}")
    for key, (variable, kind) in mapping.items():
        value = state[key]
        value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if kind == "conv":
            value = np.transpose(value, (2, 3, 1, 0))
        if value.shape != tuple(variable.shape):
            raise ValueError(f"`{key}` has shape {np.shape(state[key])}; the model expects "
                             f"{tuple(variable.shape)} (Keras layout)")
        variable.assign(value.astype(variable.dtype))
    return model
