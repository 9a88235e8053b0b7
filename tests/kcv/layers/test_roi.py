"""kcv.layers RoIAlign / RoIPool / MultiScaleRoIAlign: shared layer routine plus numeric cases."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import custom_ops
import export
from kcv.layers import MultiScaleRoIAlign, RoIAlign, RoIPool

from kcv_testing import check_layer

_RNG = np.random.default_rng(0)
_FEATURES = _RNG.normal(size=(2, 8, 10, 3)).astype(np.float32)
_BOXES = np.array([[4.0, 6.0, 20.0, 30.0], [-8.0, 10.0, 40.0, 36.0], [0.0, 0.0, 3.0, 3.0]],
                  np.float32)
_IDX = np.array([1, 0, 1], np.int32)
_PYRAMID = [_RNG.normal(size=(2, 64 // s, 64 // s, 4)).astype(np.float32) for s in (4, 8, 16)]
_PYRAMID_BOXES = np.array([[0.0, 0.0, 20.0, 24.0], [2.0, 4.0, 60.0, 62.0]], np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, arrays",
    [
        (lambda: RoIAlign((3, 4), spatial_scale=0.25, sampling_ratio=2), [_FEATURES, _BOXES, _IDX]),
        (lambda: RoIPool((3, 4), spatial_scale=0.25), [_FEATURES, _BOXES, _IDX]),
        (lambda: MultiScaleRoIAlign(2, spatial_scales=(1 / 4, 1 / 8, 1 / 16), canonical_size=32.0),
         _PYRAMID + [_PYRAMID_BOXES, _IDX[:2]]),
    ],
    ids=["RoIAlign", "RoIPool", "MultiScaleRoIAlign"],
)
def test_shared_layer_routine_and_tflite(factory, arrays):
    check_layer(factory, arrays, input_dtypes={len(arrays) - 1: "int32"})


def test_layers_match_the_ops():
    align = RoIAlign((3, 4), spatial_scale=0.25, sampling_ratio=1, aligned=False)
    want = custom_ops.roi_align(_FEATURES, _BOXES, _IDX, (3, 4), 0.25, 1, False)
    np.testing.assert_array_equal(align([_FEATURES, _BOXES, _IDX]).numpy(), want.numpy())
    pool = RoIPool(2, spatial_scale=0.5)
    want = custom_ops.roi_pool(_FEATURES, _BOXES, _IDX, 2, 0.5)
    np.testing.assert_array_equal(pool([_FEATURES, _BOXES, _IDX]).numpy(), want.numpy())


def test_boxes_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    layer = RoIAlign(2, sampling_ratio=2)
    boxes = np.array([[1000.3, 2.0, 1001.9, 3.0]], np.float32)  # not representable in float16
    feats = np.zeros((1, 1100, 4, 1), np.float32)
    feats[0, 1000:1003, :, 0] = np.arange(3, dtype=np.float32)[:, None]
    got = layer([feats, boxes, np.array([0], np.int32)])
    want = custom_ops.roi_align(feats, boxes, [0], 2, sampling_ratio=2)
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float32), want.numpy(), atol=2e-3)


def _fpn_level(box, lo, hi, canonical=224.0, k0=4):
    h, w = box[2] - box[0], box[3] - box[1]
    k = math.floor(k0 + math.log2(math.sqrt(h * w) / canonical) + 1e-6) if h * w > 0 else lo
    return min(max(k, lo), hi)


def test_multiscale_assigns_fpn_levels_and_keeps_box_order():
    maps = [_RNG.normal(size=(2, 256 // s, 256 // s, 2)) for s in (4, 8, 16, 32)]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    # Sizes 16, 112 (exactly level 3), 224 (level 4), 300, 1000 (clipped to 5), zero area.
    boxes = np.array([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 122.0, 122.0],
                      [5.0, 0.0, 229.0, 224.0], [0.0, 0.0, 300.0, 300.0],
                      [0.0, 0.0, 1000.0, 1000.0], [3.0, 3.0, 3.0, 9.0]])
    idx = np.array([0, 1, 1, 0, 1, 0], np.int32)
    levels = [_fpn_level(b, 2, 5) for b in boxes]
    assert levels == [2, 3, 4, 4, 5, 2]  # hand-checked: log2(16/224) = -3.8 -> 2 (clipped)
    np.testing.assert_array_equal(custom_ops.fpn_levels(boxes, 2, 5).numpy(), levels)
    dy = _RNG.normal(size=(6, 3, 3, 2))
    tensors = [tf.constant(m) for m in maps]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        got = MultiScaleRoIAlign(3, spatial_scales=scales, sampling_ratio=2, dtype="float64")(
            tensors + [tf.constant(boxes), tf.constant(idx)])
        loss = tf.reduce_sum(got * dy)
    grads = tape.gradient(loss, tensors)
    want_grads = [np.zeros_like(m) for m in maps]
    for i, (box, lv) in enumerate(zip(boxes, levels)):
        feat = tf.constant(maps[lv - 2])
        with tf.GradientTape() as t2:
            t2.watch(feat)
            one = custom_ops.roi_align(feat, box[None], idx[i:i + 1], 3, scales[lv - 2], 2)
            part = tf.reduce_sum(one * dy[i:i + 1])
        np.testing.assert_allclose(got[i].numpy(), one[0].numpy(), atol=1e-12)
        want_grads[lv - 2] += t2.gradient(part, feat).numpy()
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-12)


def test_adaptive_sampling_refuses_export_with_clear_error():
    inputs = [keras.Input((8, 10, 3)), keras.Input((4,)), keras.Input((), dtype="int32")]
    model = keras.Model(inputs, RoIAlign(2, sampling_ratio=-1)(inputs))
    np.testing.assert_allclose(  # adaptive works eagerly
        model([_FEATURES, _BOXES, _IDX]).numpy(),
        custom_ops.roi_align(_FEATURES, _BOXES, _IDX, 2, sampling_ratio=-1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"adaptive sampling.*cannot be exported.*sampling_ratio > 0"):
        export.convert_to_tflite(model, batch_size=2)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_missing_tensorflow_internals_only_make_roi_align_slower(sampling_ratio, monkeypatch):
    # The XLA/save-context questions go to TensorFlow internals (custom_ops/_compat.py). When an
    # upgrade removes them the layer must still give the definition (the plain autodiff
    # reference), eagerly and in tf.function, on the plain path (no nested XLA kernel).
    import importlib

    from custom_ops import _compat
    from custom_ops.roi_align import _roi_align_reference

    roi_module = importlib.import_module("custom_ops.roi_align")
    want = _roi_align_reference(_FEATURES, _BOXES, _IDX, 2, 0.25, sampling_ratio).numpy()
    calls = []
    original = roi_module._tap_gather_xla
    monkeypatch.setattr(roi_module, "_tap_gather_xla", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(_compat, "_internal", lambda module, attribute: None)
    layer = RoIAlign(2, spatial_scale=0.25, sampling_ratio=sampling_ratio)
    eager = layer([_FEATURES, _BOXES, _IDX])
    graph = tf.function(lambda *a: layer(list(a)))(_FEATURES, _BOXES, _IDX)
    assert not calls
    np.testing.assert_allclose(eager.numpy(), want, atol=1e-6)
    np.testing.assert_allclose(graph.numpy(), want, atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RoIAlign(0), r"`output_size` must be.*output_size=0"),
        (lambda: RoIAlign(2, spatial_scale=0), r"`spatial_scale` must be.*spatial_scale=0"),
        (lambda: RoIAlign(2, sampling_ratio=2.0), r"`sampling_ratio` must be an int.*2.0"),
        (lambda: RoIPool((2, 0)), r"`output_size` must be.*\(2, 0\)"),
        (lambda: MultiScaleRoIAlign(2, spatial_scales=(0.25, -1.0)), r"`spatial_scale` must be"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_inputs():
    with pytest.raises(ValueError, match=r"expects a list \[features, boxes, box_indices\]"):
        RoIAlign(2)([_FEATURES, _BOXES])
    with pytest.raises(ValueError, match=r"powers of two.*0.3"):
        MultiScaleRoIAlign(2, spatial_scales=(0.25, 0.3))([_FEATURES, _FEATURES, _BOXES, _IDX])
