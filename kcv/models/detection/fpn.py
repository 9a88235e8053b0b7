"""Feature Pyramid Network neck (torchvision's `FeaturePyramidNetwork` + `LastLevelMaxPool`)."""

import numbers

import keras
import tensorflow as tf


def _upsample_nearest(x, size):
    """Nearest-neighbour resize with source index `floor(i * in / out)` (PyTorch's "nearest")."""
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=tf.cast(size, tf.int32),
                                            align_corners=False, half_pixel_centers=False)


@keras.saving.register_keras_serializable(package="kcv")
class FPN(keras.layers.Layer):
    """FPN: lateral 1x1 convs, a top-down pathway (nearest upsampling + add), 3x3 output convs.

    For inputs `C_1..C_L` (finest first): `inner_L = lateral_L(C_L)`, then for `l = L-1..1`
    `inner_l = lateral_l(C_l) + upsample(inner_{l+1})` to `C_l`'s size (PyTorch's nearest:
    source index `floor(i * in / out)`), and `P_l = output_l(inner_l)`. With
    `extra_max_pool=True` one more level `max_pool(P_L, size 1, stride 2)` is appended
    (torchvision's `LastLevelMaxPool`, "P6" for the RPN). Initialisation as torchvision:
    `kaiming_uniform(a=1)` (= LeCun uniform) kernels and zero biases.

    Args:
        filters: channels of every output level (256 in the paper).
        extra_max_pool: append the stride-2 subsampled last level (default True).
        kernel_initializer: initializer of every conv (default "lecun_uniform").
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: list of backbone maps `[B, H_l, W_l, C_l]`, finest first (e.g. C2..C5).

    Returns:
        list of `[B, H_l, W_l, filters]` maps, finest first (P2..P5, plus P6 when
        `extra_max_pool`, of size `ceil(H_L / 2) x ceil(W_L / 2)`).

    Example:
        >>> fpn = FPN(8)
        >>> outs = fpn([tf.zeros([1, 16, 16, 4]), tf.zeros([1, 8, 8, 6])])
        >>> [tuple(o.shape) for o in outs]
        [(1, 16, 16, 8), (1, 8, 8, 8), (1, 4, 4, 8)]

    Reference:
        Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017;
        torchvision.ops.FeaturePyramidNetwork.
    """

    def __init__(self, filters=256, extra_max_pool=True, kernel_initializer="lecun_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, numbers.Integral) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        self.filters = filters
        self.extra_max_pool = extra_max_pool
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(
                input_shape[0], (list, tuple)):
            raise ValueError("FPN expects a list of feature maps, finest first. "
                             f"Received: input_shape={input_shape}")
        conv = dict(kernel_initializer=keras.initializers.get(self.kernel_initializer),
                    bias_initializer="zeros", dtype=self.dtype_policy)
        self.lateral_convs, self.output_convs = [], []
        for i, shape in enumerate(input_shape):
            if shape[-1] is None:
                raise ValueError(f"FPN needs known channels. Received: input_shape={input_shape}")
            lateral = keras.layers.Conv2D(self.filters, 1, name=f"lateral_{i}", **conv)
            output = keras.layers.Conv2D(self.filters, 3, padding="same", name=f"output_{i}",
                                         **conv)
            lateral.build((None, None, None, shape[-1]))
            output.build((None, None, None, self.filters))
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

    def call(self, inputs):
        inner = self.lateral_convs[-1](inputs[-1])
        results = [self.output_convs[-1](inner)]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[i](inputs[i])
            inner = lateral + _upsample_nearest(inner, tf.shape(lateral)[1:3])
            results.insert(0, self.output_convs[i](inner))
        if self.extra_max_pool:
            results.append(results[-1][:, ::2, ::2, :])  # max_pool2d(kernel 1, stride 2)
        return results

    def compute_output_shape(self, input_shape):
        out = [(s[0], s[1], s[2], self.filters) for s in input_shape]
        if self.extra_max_pool:
            b, h, w, _ = out[-1]
            out.append((b, None if h is None else (h + 1) // 2,
                        None if w is None else (w + 1) // 2, self.filters))
        return out

    def get_config(self):
        init = self.kernel_initializer
        if not isinstance(init, str):
            init = keras.initializers.serialize(keras.initializers.get(init))
        return {**super().get_config(), "filters": self.filters,
                "extra_max_pool": self.extra_max_pool, "kernel_initializer": init}
