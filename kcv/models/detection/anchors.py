"""Anchors: the original Faster R-CNN's 9 anchors per location and torchvision's FPN generator.

Both return `[A, 4]` float32 `[y1, x1, y2, x2]` boxes in image pixels (pixel-edge coordinates,
docs/detection.md), ordered location-major (rows, then columns of the feature map) and then by
anchor within a location; with several levels, level by level (finest first).
"""

import numbers

import keras
import numpy as np
import tensorflow as tf


def _check_positive(values, name):
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0
                         for v in values):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive numbers. "
                         f"Received: {name}={values!r}")
    return values


def _py_faster_rcnn_base(base_size, ratios, scales):
    """py-faster-rcnn's `generate_anchors`: `[A, 4]` (x1, y1, x2, y2) inclusive pixel indices.

    Ratio enumeration on the `base_size` square (`w = round(sqrt(size / r))`,
    `h = round(w * r)`), then every ratio anchor scaled by each scale, all around the centre
    `(base_size - 1) / 2`.
    """
    ctr = 0.5 * (base_size - 1)
    size = float(base_size * base_size)
    out = []
    for r in ratios:
        w_r = np.round(np.sqrt(size / r))
        h_r = np.round(w_r * r)
        for s in scales:
            w, h = w_r * s, h_r * s
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1),
                        ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return np.asarray(out, np.float64)


def _shift(base_yxyx, grid_h, grid_w, stride_h, stride_w):
    """Adds the cell offsets `(row * stride_h, col * stride_w)` to each base anchor: `[H*W*A, 4]`."""
    ys = tf.cast(tf.range(grid_h), tf.float32) * tf.cast(stride_h, tf.float32)
    xs = tf.cast(tf.range(grid_w), tf.float32) * tf.cast(stride_w, tf.float32)
    sy, sx = tf.meshgrid(ys, xs, indexing="ij")
    sy, sx = tf.reshape(sy, [-1]), tf.reshape(sx, [-1])
    shifts = tf.stack([sy, sx, sy, sx], axis=-1)
    return tf.reshape(shifts[:, None, :] + tf.constant(base_yxyx, tf.float32)[None], [-1, 4])


def generate_anchors(image_shape, stride, scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0),
                     base_size=16):
    """The Faster R-CNN paper's anchors (py-faster-rcnn) over a feature map of stride `stride`.

    The base anchors are py-faster-rcnn's: for each ratio `r = h / w` the `base_size` square is
    reshaped to `w = round(sqrt(base_size^2 / r))`, `h = round(w * r)` and then multiplied by each
    scale, so the defaults give widths x heights from 184 x 96 up to 736 x 384 (`r = 0.5`),
    128 x 128 to 512 x 512 and 88 x 176 to 352 x 704 (`r = 2`), centred on the middle of the
    first `stride x stride` cell. py-faster-rcnn's inclusive pixel indices `(x1, y1, x2, y2)`
    become pixel-edge `[y1, x1, y2 + 1, x2 + 1]`, so `x2 - x1` is the width. The feature map
    has `ceil(height / stride) x ceil(width / stride)` cells.

    Args:
        image_shape: `(height, width)` of the input image, Python ints or int Tensors.
        stride: feature map stride in pixels (16 for VGG16 conv5_3), a positive int.
        scales: anchor scales relative to `base_size` (default `(8, 16, 32)`).
        ratios: aspect ratios `h / w` (default `(0.5, 1, 2)`).
        base_size: side of the reference square (default 16).

    Returns:
        float32 Tensor `[ceil(H / stride) * ceil(W / stride) * len(ratios) * len(scales), 4]`,
        yxyx; location-major (row, column), then ratio, then scale.

    Example:
        >>> a = generate_anchors((800, 600), 16)
        >>> a.shape
        TensorShape([17100, 4])
        >>> a[2].numpy()  # ratio 0.5, scale 32 at the first cell: 736 wide, 384 high
        array([-184., -360.,  200.,  376.], dtype=float32)

    Reference:
        Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
        Networks", NeurIPS 2015 (section 3.1.1).
    """
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
        raise ValueError(f"`stride` must be a positive int. Received: stride={stride!r}")
    if isinstance(base_size, bool) or not isinstance(base_size, numbers.Integral) or base_size < 1:
        raise ValueError(f"`base_size` must be a positive int. Received: base_size={base_size!r}")
    scales = _check_positive(scales, "scales")
    ratios = _check_positive(ratios, "ratios")
    if isinstance(image_shape, tf.Tensor):
        image_shape = tf.unstack(image_shape, num=2) if image_shape.shape == (2,) else [image_shape]
    if len(image_shape) != 2:
        raise ValueError(f"`image_shape` must be (height, width). Received: image_shape={image_shape!r}")
    base = _py_faster_rcnn_base(base_size, ratios, scales)
    base_yxyx = np.stack([base[:, 1], base[:, 0], base[:, 3] + 1, base[:, 2] + 1], axis=-1)
    with tf.name_scope("generate_anchors"):
        height, width = (tf.cast(s, tf.int32) for s in image_shape)
        grid_h, grid_w = (height + stride - 1) // stride, (width + stride - 1) // stride
        return _shift(base_yxyx, grid_h, grid_w, stride, stride)


def _torchvision_base(sizes, ratios):
    """torchvision's cell anchors: `round([-w, -h, w, h] / 2)`, ratio-major then size, as yxyx."""
    out = []
    for r in ratios:
        h_ratio = np.sqrt(np.float32(r))
        w_ratio = np.float32(1.0) / h_ratio
        for s in sizes:
            w, h = w_ratio * np.float32(s), h_ratio * np.float32(s)
            out.append(np.round(np.array([-h, -w, h, w], np.float32) / np.float32(2)))
    return np.asarray(out, np.float32)


@keras.saving.register_keras_serializable(package="kcv")
class AnchorGenerator(keras.layers.Layer):
    """torchvision's `AnchorGenerator`: per-level anchors at the top-left corner of each cell.

    For level `l` the cell anchors are `round([-w / 2, -h / 2, w / 2, h / 2])` with
    `h = size * sqrt(r)`, `w = size / sqrt(r)` for each aspect ratio `r = h / w` and each size
    (ratio-major), in float32 and rounded half to even as `torch.round`. They are shifted to
    `(row * stride_h, col * stride_w)` with `stride = image_size // feature_size` (integer
    division per axis), i.e. centred on each cell's top-left corner, not its centre.

    Args:
        sizes: one tuple of anchor sizes (pixels) per level, e.g. `((32,), (64,), (128,),
            (256,), (512,))` for P2-P6; a flat tuple means one size per level.
        aspect_ratios: one tuple of ratios per level, or a single tuple used for every level
            (default `(0.5, 1.0, 2.0)`).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[images [B, H, W, C], feature_0 [B, H_0, W_0, C_0], ...]`, one feature map per
            level in the order of `sizes`. Only the shapes are read.

    Returns:
        float32 `[sum_l H_l * W_l * A_l, 4]` yxyx anchors in image pixels, level by level, each
        level location-major (row, column) then anchor.

    Example:
        >>> gen = AnchorGenerator(sizes=((32,),), aspect_ratios=(1.0,))
        >>> gen([tf.zeros([1, 8, 8, 3]), tf.zeros([1, 2, 2, 4])]).numpy()
        array([[-16., -16., 16., 16.],
               [-16., -12., 16., 20.],
               [-12., -16., 20., 16.],
               [-12., -12., 20., 20.]], dtype=float32)

    Reference:
        torchvision.models.detection.anchor_utils.AnchorGenerator; Lin et al., "Feature Pyramid
        Networks for Object Detection", CVPR 2017.
    """

    def __init__(self, sizes=((32,), (64,), (128,), (256,), (512,)),
                 aspect_ratios=(0.5, 1.0, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        levels = [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in sizes]
        if not levels:
            raise ValueError(f"`sizes` must give at least one level. Received: sizes={sizes!r}")
        if aspect_ratios and all(isinstance(r, (list, tuple)) for r in aspect_ratios):
            ratios = [tuple(r) for r in aspect_ratios]
        else:
            ratios = [tuple(aspect_ratios)] * len(levels)
        if len(ratios) != len(levels):
            raise ValueError(
                "`aspect_ratios` must give one tuple per level of `sizes` (or one for all). "
                f"Received: sizes={sizes!r}, aspect_ratios={aspect_ratios!r}")
        self._levels = [(_check_positive(s, "sizes"), _check_positive(r, "aspect_ratios"))
                        for s, r in zip(levels, ratios)]
        self._cell_anchors = [_torchvision_base(s, r) for s, r in self._levels]

    def num_anchors_per_location(self):
        """Anchors per feature-map cell, one int per level."""
        return [len(s) * len(r) for s, r in self._levels]

    def _check_inputs(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(self._levels) + 1:
            raise ValueError(
                f"AnchorGenerator expects [images, one feature map per level] "
                f"({len(self._levels) + 1} tensors). Received: "
                f"{len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs)} inputs")

    def call(self, inputs):
        self._check_inputs(inputs)
        image_hw = tf.shape(inputs[0])[1:3]
        levels = []
        for feature, base in zip(inputs[1:], self._cell_anchors):
            grid = tf.shape(feature)[1:3]
            stride = image_hw // grid
            levels.append(_shift(base, grid[0], grid[1], stride[0], stride[1]))
        return tf.concat(levels, axis=0)

    def compute_output_shape(self, input_shape):
        self._check_inputs(input_shape)
        total = 0
        for shape, n in zip(input_shape[1:], self.num_anchors_per_location()):
            if shape[1] is None or shape[2] is None:
                return (None, 4)
            total += shape[1] * shape[2] * n
        return (total, 4)

    def compute_output_spec(self, inputs):
        shapes = [tuple(x.shape) for x in inputs] if isinstance(inputs, (list, tuple)) else inputs
        return keras.KerasTensor(self.compute_output_shape(shapes), "float32")

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes, "aspect_ratios": self.aspect_ratios}


@keras.saving.register_keras_serializable(package="kcv")
class SingleLevelAnchorGenerator(keras.layers.Layer):
    """The paper's anchors (`generate_anchors`) over one feature map, as a layer.

    For the single-level Faster R-CNN (VGG16 conv5_3 at stride 16): the grid is the feature
    map's, `H_f x W_f` cells of `stride` pixels, with `len(ratios) * len(scales)` anchors per
    cell (9 by default), in `generate_anchors`' order.

    Args:
        stride: feature map stride in pixels (16 for VGG16 conv5_3).
        scales, ratios, base_size: as `generate_anchors` (default `(8, 16, 32)`,
            `(0.5, 1.0, 2.0)`, 16).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[images [B, H, W, C], feature [B, H_f, W_f, C_f]]`; only the feature map's
            shape is read.

    Returns:
        float32 `[H_f * W_f * len(ratios) * len(scales), 4]` yxyx anchors in image pixels.

    Example:
        >>> gen = SingleLevelAnchorGenerator(16)
        >>> gen([tf.zeros([1, 64, 64, 3]), tf.zeros([1, 4, 4, 8])]).shape
        TensorShape([144, 4])

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015 (section 3.1.1).
    """

    def __init__(self, stride=16, scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0), base_size=16,
                 **kwargs):
        super().__init__(**kwargs)
        generate_anchors((1, 1), stride, scales, ratios, base_size)  # validates the arguments
        self.stride = stride
        self.scales = tuple(scales)
        self.ratios = tuple(ratios)
        self.base_size = base_size

    def num_anchors_per_location(self):
        """Anchors per feature-map cell, as a one-level list (as `AnchorGenerator`)."""
        return [len(self.scales) * len(self.ratios)]

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("SingleLevelAnchorGenerator expects [images, feature map]. "
                             f"Received: {type(inputs)} inputs")
        grid = tf.shape(inputs[1])[1:3]
        return generate_anchors(grid * self.stride, self.stride, self.scales, self.ratios,
                                self.base_size)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1][1:3]
        n = None if h is None or w is None else h * w * self.num_anchors_per_location()[0]
        return (n, 4)

    def compute_output_spec(self, inputs):
        shapes = [tuple(x.shape) for x in inputs] if isinstance(inputs, (list, tuple)) else inputs
        return keras.KerasTensor(self.compute_output_shape(shapes), "float32")

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "scales": self.scales,
                "ratios": self.ratios, "base_size": self.base_size}
