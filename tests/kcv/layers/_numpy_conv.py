"""NumPy references for the building-block tests: convolution (TF "same"/"valid" padding,
stride, dilation, depthwise), inference batch norm, activations, and the ConvBNAct unit.

Written from the textbook formulas, independent of TensorFlow's kernels.
"""

import keras
import numpy as np


def _pads(size, k, stride, dilation, padding):
    if padding == "valid":
        return 0, 0
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def conv2d(x, kernel, stride=1, dilation=1, padding="same", bias=None, depthwise=False):
    """x [N, H, W, C]; kernel [kh, kw, C, F] (or [kh, kw, C, M] with depthwise=True)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = (_pads(h, kh, stride, dilation, padding),
                          _pads(w, kw, stride, dilation, padding))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out_h = (xp.shape[1] - (kh - 1) * dilation - 1) // stride + 1
    out_w = (xp.shape[2] - (kw - 1) * dilation - 1) // stride + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation: i * dilation + (out_h - 1) * stride + 1: stride,
                       j * dilation: j * dilation + (out_w - 1) * stride + 1: stride, :]
            if depthwise:  # output channel c * M + m
                out = out + (patch[..., :, None] * kernel[i, j]).reshape(n, out_h, out_w, -1)
            else:
                out = out + patch @ kernel[i, j]
    return out if bias is None else out + np.asarray(bias, np.float64)


def batch_norm(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def inference_batch_norm(x, bn):
    """`batch_norm` with the weights of a Keras BatchNormalization layer `bn`."""
    return batch_norm(x, *[np.asarray(w) for w in (bn.gamma, bn.beta, bn.moving_mean,
                                                   bn.moving_variance)], bn.epsilon)


def activation(x, name):
    return {None: lambda v: v, "relu": lambda v: np.maximum(v, 0),
            "relu6": lambda v: np.clip(v, 0, 6),
            "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[name](x)


def randomize_batch_norms(layer, rng):
    """Random gamma/beta/moving statistics in every BatchNormalization under `layer`, so that
    inference-mode batch norm is not the identity."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, keras.layers.BatchNormalization):
            c = sub.gamma.shape[0]
            sub.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c),
                             rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)])


def built_with_random_batch_norms(layer, x, seed=1):
    """Builds `layer` on `x` and randomizes its batch norms (see `randomize_batch_norms`)."""
    layer(x)
    randomize_batch_norms(layer, np.random.default_rng(seed))
    return layer


def conv_bn_act(x, unit):
    """NumPy forward of a built kcv ConvBNAct in inference mode (batch norm or none)."""
    conv = unit.conv
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kernel = np.asarray(conv.kernel)
    bias = np.asarray(conv.bias) if conv.use_bias else None
    stride = conv.strides[0]
    y = conv2d(x, kernel, stride, conv.dilation_rate[0], conv.padding, bias, depthwise)
    if unit.norm_layer is not None:
        y = inference_batch_norm(y, unit.norm_layer)
    return activation(y, unit.activation)
