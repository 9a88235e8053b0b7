"""RoI feature extraction layers: RoIAlign, RoIPool and FPN MultiScaleRoIAlign.

Thin Keras wrappers of `custom_ops.roi_align`, `custom_ops.roi_pool` and
`custom_ops.multiscale_roi_align`. Inputs are `[features, boxes, box_indices]`;
the number of boxes K is the leading ("batch") dimension of `boxes` and of the output.
Boxes are not autocast under mixed precision (float16 cannot hold pixel coordinates exactly):
only the feature maps are cast to the compute dtype.
"""

import keras
import tensorflow as tf

from custom_ops import _sampling
from custom_ops._context import in_save_context
from custom_ops.roi_align import multiscale_roi_align, roi_align
from custom_ops.roi_pool import roi_pool


def _refuse_adaptive_export(layer):
    # if_unknown=False: should TensorFlow's internal save context move, export is not refused
    # here (it then fails later, in the converter) and adaptive RoIAlign keeps working.
    if layer.sampling_ratio <= 0 and in_save_context(if_unknown=False):
        raise ValueError(
            f"{layer.__class__.__name__} with adaptive sampling (`sampling_ratio <= 0`) cannot "
            "be exported (SavedModel/TFLite): the number of samples per bin depends on the box "
            "values, which TFLite builtins and XLA cannot express. Rebuild the layer with a "
            f"fixed `sampling_ratio > 0` (e.g. 2). Received: sampling_ratio={layer.sampling_ratio}"
        )


def _check_sampling_ratio(sampling_ratio):
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise ValueError(
            f"`sampling_ratio` must be an int. Received: sampling_ratio={sampling_ratio!r}"
        )


class _RoILayer(keras.layers.Layer):
    """Shared input handling: `[features..., boxes, box_indices]`, features cast only."""

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        _sampling.check_output_size(output_size)
        self.output_size = output_size
        # Keep boxes float32 and indices int under mixed_float16 (cast in `_split` instead).
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def _split(self, inputs, num_maps):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != num_maps + 2:
            raise ValueError(
                f"{self.__class__.__name__} expects a list [features{' x ' + str(num_maps) if num_maps > 1 else ''}, "
                f"boxes, box_indices]. Received: {len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs)} inputs"
            )
        maps = [tf.cast(f, self.compute_dtype) for f in inputs[:num_maps]]
        boxes = tf.convert_to_tensor(inputs[-2])
        boxes = tf.cast(boxes, "float32") if boxes.dtype != tf.float64 else boxes
        return maps, boxes, inputs[-1]

    def compute_output_shape(self, input_shape):
        oh, ow = _sampling.check_output_size(self.output_size)
        return (input_shape[-2][0], oh, ow, input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


@keras.saving.register_keras_serializable(package="kcv")
class RoIAlign(_RoILayer):
    """RoIAlign (Mask R-CNN / Detectron2) as a layer; see `custom_ops.roi_align`.

    Args:
        output_size: int or `(height, width)` bins per box.
        spatial_scale: feature map size / image size (e.g. `1 / 16`). Default 1.
        sampling_ratio: samples per bin side; `<= 0` is adaptive
            (`ceil(box_size / output_size)`), which cannot be compiled with XLA or exported:
            saving the model as SavedModel/TFLite raises a `ValueError`. Default 2.
        aligned: half-pixel shift of Detectron2 (default `True`).
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[features [N, H, W, C], boxes [K, 4] ([y1, x1, y2, x2] image pixels),
            box_indices [K] int32]`.

    Returns:
        [K, output_height, output_width, C] in the layer's compute dtype.

    Example:
        >>> features = tf.random.normal([2, 50, 68, 256])
        >>> boxes = tf.constant([[16.0, 32.0, 320.0, 480.0]])  # y1, x1, y2, x2 image pixels
        >>> box_indices = tf.constant([0])
        >>> RoIAlign(7, spatial_scale=1 / 16)([features, boxes, box_indices]).shape
        TensorShape([1, 7, 7, 256])

    Reference:
        He et al., "Mask R-CNN", ICCV 2017.
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True, **kwargs):
        super().__init__(output_size, **kwargs)
        _sampling.check_spatial_scale(spatial_scale)
        _check_sampling_ratio(sampling_ratio)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def call(self, inputs):
        _refuse_adaptive_export(self)
        (features,), boxes, box_indices = self._split(inputs, 1)
        return roi_align(features, boxes, box_indices, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def get_config(self):
        return {**super().get_config(), "spatial_scale": self.spatial_scale,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned}


@keras.saving.register_keras_serializable(package="kcv")
class RoIPool(_RoILayer):
    """RoIPool (Fast R-CNN max pooling over quantized bins) as a layer; see `custom_ops.roi_pool`.

    Args:
        output_size: int or `(height, width)` bins per box.
        spatial_scale: feature map size / image size (e.g. `1 / 16`). Default 1.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[features [N, H, W, C], boxes [K, 4], box_indices [K] int32]`.

    Returns:
        [K, output_height, output_width, C] in the layer's compute dtype.

    Example:
        >>> features = tf.random.normal([2, 50, 68, 256])
        >>> boxes = tf.constant([[16.0, 32.0, 320.0, 480.0]])  # y1, x1, y2, x2 image pixels
        >>> box_indices = tf.constant([0])
        >>> RoIPool(7, spatial_scale=1 / 16)([features, boxes, box_indices]).shape
        TensorShape([1, 7, 7, 256])

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015.
    """

    def __init__(self, output_size, spatial_scale=1.0, **kwargs):
        super().__init__(output_size, **kwargs)
        _sampling.check_spatial_scale(spatial_scale)
        self.spatial_scale = spatial_scale

    def call(self, inputs):
        (features,), boxes, box_indices = self._split(inputs, 1)
        return roi_pool(features, boxes, box_indices, self.output_size, self.spatial_scale)

    def get_config(self):
        return {**super().get_config(), "spatial_scale": self.spatial_scale}


@keras.saving.register_keras_serializable(package="kcv")
class MultiScaleRoIAlign(_RoILayer):
    """RoIAlign over an FPN: each box is pooled from level `k` of the pyramid.

    `k = floor(canonical_level + log2(sqrt(h * w) / canonical_size))` clipped to the available
    levels, with `h, w` the box size in image pixels (FPN eq. 1); outputs keep the box order.
    See `custom_ops.multiscale_roi_align`.

    Args:
        output_size: int or `(height, width)` bins per box.
        spatial_scales: one scale per input map, finest first, powers of two one level apart
            (default `(1/4, 1/8, 1/16, 1/32)`: P2..P5).
        sampling_ratio: samples per bin side (> 0 to export; <= 0 adaptive). Default 2.
        aligned: half-pixel shift of Detectron2 (default `True`).
        canonical_size, canonical_level: 224 and 4 as in the FPN paper.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[map_0, ..., map_{L-1}, boxes [K, 4], box_indices [K] int32]`, the maps
            `[N, H_l, W_l, C]` in the order of `spatial_scales`.

    Returns:
        [K, output_height, output_width, C].

    Example:
        >>> p2, p3, p4, p5 = [tf.random.normal([1, 64 // s, 64 // s, 8]) for s in (4, 8, 16, 32)]
        >>> boxes, box_indices = tf.constant([[0.0, 0.0, 32.0, 48.0]]), tf.constant([0])
        >>> MultiScaleRoIAlign(7)([p2, p3, p4, p5, boxes, box_indices]).shape
        TensorShape([1, 7, 7, 8])

    Reference:
        Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
    """

    def __init__(self, output_size, spatial_scales=(0.25, 0.125, 0.0625, 0.03125),
                 sampling_ratio=2, aligned=True, canonical_size=224.0, canonical_level=4,
                 **kwargs):
        super().__init__(output_size, **kwargs)
        _check_sampling_ratio(sampling_ratio)
        for s in spatial_scales:
            _sampling.check_spatial_scale(s)
        self.spatial_scales = spatial_scales
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def call(self, inputs):
        _refuse_adaptive_export(self)
        maps, boxes, box_indices = self._split(inputs, len(self.spatial_scales))
        return multiscale_roi_align(maps, boxes, box_indices, self.output_size,
                                    list(self.spatial_scales), self.sampling_ratio, self.aligned,
                                    self.canonical_size, self.canonical_level)

    def get_config(self):
        return {**super().get_config(), "spatial_scales": self.spatial_scales,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "canonical_size": self.canonical_size, "canonical_level": self.canonical_level}
