"""custom_ops.roi_align against a NumPy port of the definition (torchvision's loops), float64."""

import importlib
import math

import numpy as np
import pytest
import tensorflow as tf

import custom_ops
from custom_ops.roi_align import _roi_align_reference, multiscale_roi_align

from kcv_testing import check_op


# ---------------------------------------------------------------------------------------------
# NumPy oracle, written from the definition with plain loops (torchvision roi_align_kernel.cpp:
# bilinear_interpolate / roi_align_forward / roi_align_backward). Boxes are [y1, x1, y2, x2].
def _np_bilinear(height, width, y, x):
    """[(row, col, weight)] of the bilinear sample at (y, x), torchvision's border rules."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def _np_roi_align_taps(shape, box, out_size, scale, ratio, aligned):
    """For each bin (p, q): list of (row, col, weight / count)."""
    _, height, width, _ = shape
    oh, ow = out_size
    off = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = box
    start_h, start_w = y1 * scale - off, x1 * scale - off
    roi_h, roi_w = y2 * scale - off - start_h, x2 * scale - off - start_w
    if not aligned:
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    bin_h, bin_w = roi_h / oh, roi_w / ow
    gh = ratio if ratio > 0 else math.ceil(roi_h / oh)
    gw = ratio if ratio > 0 else math.ceil(roi_w / ow)
    count = max(gh * gw, 1)
    taps = {}
    for p in range(oh):
        for q in range(ow):
            lst = []
            for iy in range(gh):
                y = start_h + p * bin_h + (iy + 0.5) * bin_h / gh
                for ix in range(gw):
                    x = start_w + q * bin_w + (ix + 0.5) * bin_w / gw
                    lst += [(r, c, w / count) for r, c, w in _np_bilinear(height, width, y, x)]
            taps[p, q] = lst
    return taps


def np_roi_align(features, boxes, box_indices, out_size, scale, ratio, aligned, dy=None):
    """Forward [K, oh, ow, C] and, given `dy`, the gradient with respect to `features`."""
    oh, ow = out_size
    out = np.zeros((len(boxes), oh, ow, features.shape[-1]))
    grad = np.zeros_like(features, dtype=np.float64)
    for k, (box, b) in enumerate(zip(boxes, box_indices)):
        taps = _np_roi_align_taps(features.shape, box, out_size, scale, ratio, aligned)
        for (p, q), lst in taps.items():
            for r, c, w in lst:
                out[k, p, q] += w * features[b, r, c]
                if dy is not None:
                    grad[b, r, c] += w * dy[k, p, q]
    return out, grad


# ---------------------------------------------------------------------------------------------
_RNG = np.random.default_rng(0)
_FEATURES = _RNG.normal(size=(2, 7, 9, 3))
# [y1, x1, y2, x2] in image pixels: inside, partly outside (all sides), tiny, zero-size,
# inverted, large, and exactly on the border.
_BOXES_PX = np.array([
    [1.0, 2.0, 5.5, 7.25],
    [-3.0, -2.5, 4.0, 3.0],
    [4.0, 6.0, 11.0, 13.0],
    [2.3, 3.1, 2.6, 3.2],
    [3.0, 3.0, 3.0, 3.0],
    [5.0, 6.0, 2.0, 1.0],
    [-1.0, -1.0, 8.0, 10.0],
    [6.0, 8.0, 7.0, 9.0],
])
_BOX_INDICES = np.array([0, 1, 0, 1, 0, 1, 1, 0], np.int32)


def _case(scale):
    # Boxes are in image pixels: at scale 1/4 the image is 4x larger than the map.
    return _BOXES_PX / scale


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [-1, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_forward_backward_match_numpy_definition(aligned, ratio, scale):
    boxes = _case(scale)
    out_size = (3, 2)
    dy = _RNG.normal(size=(len(boxes), 3, 2, 3))
    want, want_grad = np_roi_align(_FEATURES, boxes, _BOX_INDICES, out_size, scale, ratio,
                                   aligned, dy)
    feats = tf.constant(_FEATURES)
    for fn in (custom_ops.roi_align, _roi_align_reference):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            got = fn(feats, boxes, _BOX_INDICES, out_size, scale, ratio, aligned)
            loss = tf.reduce_sum(got * dy)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)
        np.testing.assert_allclose(tape.gradient(loss, feats).numpy(), want_grad, atol=1e-6,
                                   rtol=0)


def test_float32_forward_matches_numpy():
    want, _ = np_roi_align(_FEATURES, _BOXES_PX, _BOX_INDICES, (2, 2), 1.0, 2, True)
    got = custom_ops.roi_align(_FEATURES.astype(np.float32), _BOXES_PX.astype(np.float32),
                               _BOX_INDICES, 2, sampling_ratio=2)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_float16_features_compute_in_float32_and_return_float16():
    feats = np.full((1, 4, 4, 2), 60000.0)  # the sum of 4 samples would overflow float16
    got = custom_ops.roi_align(feats.astype(np.float16), [[0.0, 0.0, 4.0, 4.0]], [0], 1,
                               sampling_ratio=2)
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float64), 60000.0, rtol=1e-3)


def test_hand_computed_single_sample():
    # 2x2 map, one bin, one sample at the box centre: aligned box [0.5, 0.5, 1.5, 1.5] -> centre
    # (0.5, 0.5) is the mean of the four pixels.
    feats = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    got = custom_ops.roi_align(feats, [[0.5, 0.5, 1.5, 1.5]], [0], 1, sampling_ratio=1)
    np.testing.assert_allclose(got.numpy().ravel(), [2.5])
    # A box far outside the map samples nothing: zeros.
    got = custom_ops.roi_align(feats, [[10.0, 10.0, 12.0, 12.0]], [0], 2, sampling_ratio=2)
    np.testing.assert_array_equal(got.numpy(), 0.0)


def test_empty_boxes_give_empty_output_and_zero_gradient():
    feats = tf.constant(_FEATURES)
    with tf.GradientTape() as tape:
        tape.watch(feats)
        out = custom_ops.roi_align(feats, np.zeros((0, 4)), np.zeros((0,), np.int32), (4, 5))
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 4, 5, 3)
    np.testing.assert_array_equal(tape.gradient(loss, feats).numpy(), 0.0)


def test_no_gradient_to_boxes():
    boxes = tf.constant(_BOXES_PX)
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        out = custom_ops.roi_align(_FEATURES, boxes, _BOX_INDICES, 2, sampling_ratio=2)
    assert tape.gradient(out, boxes) is None


def _roi_align_inputs(ratio):
    def make(seed, dtype):
        rng = np.random.default_rng(seed)
        return dict(features=rng.normal(size=(2, 4, 5, 1)).astype(dtype),
                    boxes=rng.uniform(-1.0, 6.0, size=(4, 4)).astype(dtype),
                    box_indices=np.array([0, 1, 1, 0], np.int32), output_size=2,
                    spatial_scale=0.8, sampling_ratio=ratio)

    return make


@pytest.mark.parametrize("ratio", [-1, 2])
def test_op_contract(ratio):
    """Against the autodiff reference in float32/float64, gradient check over three seeds,
    tf.function and XLA (fixed sampling ratio only: adaptive sampling under XLA is an error,
    tested below)."""
    check_op(custom_ops.roi_align, _roi_align_reference, _roi_align_inputs(ratio),
             grad_args=["features"],  # no gradient flows to boxes (torchvision, Detectron2)
             xla=ratio > 0)


def test_adaptive_sampling_in_tf_function_matches_eager():
    args = (_FEATURES.astype(np.float32), _BOXES_PX.astype(np.float32), _BOX_INDICES)
    adaptive = custom_ops.roi_align(*args, (3, 3), 0.5, -1, True).numpy()
    got = tf.function(lambda a, b, c: custom_ops.roi_align(a, b, c, (3, 3), 0.5, -1))(*args)
    np.testing.assert_allclose(got.numpy(), adaptive, atol=1e-6)


def test_adaptive_sampling_under_xla_raises_clear_error():
    args = (_FEATURES.astype(np.float32), _BOXES_PX.astype(np.float32), _BOX_INDICES)
    fn = tf.function(lambda a, b, c: custom_ops.roi_align(a, b, c, 2), jit_compile=True)
    with pytest.raises(ValueError, match="adaptive sampling.*sampling_ratio > 0"):
        fn(*args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=np.zeros((7, 9, 3))), r"`features` must be a rank-4.*\(7, 9, 3\)"),
        (dict(boxes=np.zeros((2, 5))), r"`boxes` must have shape \[K, 4\].*\(2, 5\)"),
        (dict(boxes=np.zeros((2, 4, 1))), r"`boxes` must have shape \[K, 4\].*\(2, 4, 1\)"),
        (dict(box_indices=np.zeros((3,), np.int32)), r"same length K.*\(2, 4\).*\(3,\)"),
        (dict(output_size=0), r"`output_size` must be.*output_size=0"),
        (dict(output_size=(2, -1)), r"`output_size` must be.*\(2, -1\)"),
        (dict(spatial_scale=0.0), r"`spatial_scale` must be.*0.0"),
        (dict(sampling_ratio=1.5), r"`sampling_ratio` must be an int.*1.5"),
    ],
)
def test_bad_static_input_raises_value_error(kwargs, match):
    args = dict(features=_FEATURES, boxes=_BOXES_PX[:2], box_indices=np.array([0, 1], np.int32),
                output_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        custom_ops.roi_align(**args)


@pytest.mark.parametrize(
    "boxes, idx, match",
    [
        ([[0.0, 0.0, np.nan, 1.0]], [0], "`boxes` must be finite"),
        ([[0.0, 0.0, np.inf, 1.0]], [0], "`boxes` must be finite"),
        ([[0.0, 0.0, 1.0, 1.0]], [2], "`box_indices` must be < N"),
        ([[0.0, 0.0, 1.0, 1.0]], [-1], "`box_indices` must be >= 0"),
    ],
)
def test_bad_runtime_input_raises_invalid_argument(boxes, idx, match):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        custom_ops.roi_align(_FEATURES, np.array(boxes), np.array(idx, np.int32), 2, 1.0, 2)


def test_integer_features_raise_type_error():
    with pytest.raises(TypeError, match="`features` must be a float tensor.*int32"):
        custom_ops.roi_align(np.zeros((1, 4, 4, 1), np.int32), [[0.0, 0, 1, 1]], [0], 2)


@pytest.mark.parametrize("path", ["xla_kernels", "plain_ops", "inside_xla"])
def test_every_kernel_path_matches_numpy_with_padded_box_count(path, monkeypatch):
    # Outside XLA the gather/scatter are compiled with XLA and K is padded to a power of two
    # (K = 5 -> 8); an export (save context) uses the plain ops; inside an XLA cluster the plain
    # ops are compiled with it. All must give the definition, forward and backward.
    from custom_ops import _context

    roi_module = importlib.import_module("custom_ops.roi_align")  # the package exports the op

    calls = []
    original = roi_module._tap_gather_xla
    monkeypatch.setattr(roi_module, "_tap_gather_xla", lambda *a: calls.append(1) or original(*a))
    if path == "plain_ops":  # what tf.saved_model.save (hence export.to_tflite) looks like
        monkeypatch.setattr(_context, "in_save_context", lambda: True)
    boxes, idx = _BOXES_PX[:5], _BOX_INDICES[:5]
    dy = _RNG.normal(size=(5, 2, 3, 3))
    want, want_grad = np_roi_align(_FEATURES, boxes, idx, (2, 3), 0.5, 2, True, dy)

    def fwd_bwd(feats):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = custom_ops.roi_align(feats, boxes, idx, (2, 3), 0.5, 2, True)
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, feats)

    fn = tf.function(fwd_bwd, jit_compile=True) if path == "inside_xla" else fwd_bwd
    got, got_grad = fn(tf.constant(_FEATURES))
    assert bool(calls) == (path == "xla_kernels"), (path, len(calls))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_grad.numpy(), want_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k, want", [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (512, 512),
                                     (513, 1024)])
def test_box_count_is_padded_to_a_power_of_two(k, want):
    roi_module = __import__("custom_ops.roi_align", fromlist=["_padded_bins"])
    assert int(roi_module._padded_bins(tf.constant(k * 6), 6)) == want * 6


_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
_MAPS = [np.zeros((1, 64 // s, 64 // s, 8), np.float32) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(features=_MAPS[0]), ValueError,
         r"`features` must be a non-empty list of NHWC maps. Received: <class 'numpy.ndarray'>"),
        (dict(features=[]), ValueError, r"`features` must be a non-empty list.*<class 'list'>"),
        (dict(spatial_scales=_SCALES[:3]), ValueError,
         r"one scale per feature map. Received: spatial_scales=\[0.25, 0.125, 0.0625\] for 4"),
        (dict(spatial_scales=0.25), ValueError, r"one scale per feature map.*=0.25 for 4 maps"),
        (dict(spatial_scales=[1 / 4, 1 / 8, 1 / 16, 1 / 30]), ValueError,
         r"powers of two, finest first, one level apart.*0.0333"),
        (dict(spatial_scales=[1 / 4, 1 / 16, 1 / 32, 1 / 64]), ValueError,
         r"one level apart.*\[0.25, 0.0625, 0.03125, 0.015625\]"),
        (dict(spatial_scales=_SCALES[::-1]), ValueError, r"finest first.*\[0.03125,"),
        (dict(spatial_scales=[-0.25, 1 / 8, 1 / 16, 1 / 32]), ValueError,
         r"`spatial_scale` must be.*-0.25"),
        (dict(features=_MAPS[:3] + [np.zeros((1, 2, 2, 4), np.float32)]), ValueError,
         r"share dtype and channel count.*\('float32', \(1, 2, 2, 4\)\)"),
        (dict(features=_MAPS[:3] + [np.zeros((1, 2, 2, 8), np.float64)]), ValueError,
         r"share dtype and channel count.*\('float64', \(1, 2, 2, 8\)\)"),
        (dict(features=_MAPS[:3] + [np.zeros((2, 2, 8), np.float32)]), ValueError,
         r"`features` must be a rank-4.*\(2, 2, 8\)"),
        (dict(boxes=np.zeros((1, 5), np.float32)), ValueError,
         r"`boxes` must have shape \[K, 4\].*\(1, 5\)"),
        (dict(sampling_ratio=1.5), ValueError, r"`sampling_ratio` must be an int.*1.5"),
    ],
)
def test_multiscale_roi_align_errors(kwargs, error, match):
    args = dict(features=_MAPS, boxes=np.array([[0.0, 0.0, 32.0, 48.0]], np.float32),
                box_indices=np.array([0], np.int32), output_size=7, spatial_scales=_SCALES)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        multiscale_roi_align(**args)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_float32_gradient_by_crop_and_resize_kernel_matches_numpy(aligned, scale, monkeypatch):
    # float32 with a fixed sampling_ratio, outside XLA: the gradient is TensorFlow's
    # CropAndResizeGradImage on the edge-padded map (float64 keeps the exact scatter).
    roi_module = importlib.import_module("custom_ops.roi_align")
    calls = []
    original = roi_module._crop_gradient
    monkeypatch.setattr(roi_module, "_crop_gradient", lambda *a: calls.append(1) or original(*a))
    boxes = _case(scale)
    dy = _RNG.normal(size=(len(boxes), 3, 2, 3))
    want, want_grad = np_roi_align(_FEATURES, boxes, _BOX_INDICES, (3, 2), scale, 2, aligned, dy)
    feats = tf.constant(_FEATURES.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(feats)
        got = custom_ops.roi_align(feats, boxes.astype(np.float32), _BOX_INDICES, (3, 2), scale,
                                   2, aligned)
        loss = tf.reduce_sum(got * dy.astype(np.float32))
    grad = tape.gradient(loss, feats)
    assert calls
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(grad.numpy(), want_grad, atol=1e-5, rtol=0)


def test_float32_multiscale_gradient_matches_numpy_per_level():
    maps = [_RNG.normal(size=(2, 64 // s, 64 // s, 2)) for s in (4, 8, 16, 32)]
    # FPN levels 2, 3, 5, 2 (sides 16, 112, 1000, zero area; the rule is tested in
    # tests/kcv/layers/test_roi.py): level 4 gets no box and a zero gradient.
    boxes = np.array([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 122.0, 122.0],
                      [0.0, 0.0, 1000.0, 1000.0], [3.0, 3.0, 3.0, 9.0]])
    levels = [2, 3, 5, 2]
    idx = np.array([0, 0, 1, 1], np.int32)
    dy = _RNG.normal(size=(4, 3, 3, 2))
    tensors = [tf.constant(m.astype(np.float32)) for m in maps]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        got = multiscale_roi_align(tensors, boxes.astype(np.float32), idx, 3, _SCALES, 2)
        loss = tf.reduce_sum(got * dy.astype(np.float32))
    grads = tape.gradient(loss, tensors)
    want_grads = [np.zeros_like(m) for m in maps]
    for i, lv in enumerate(levels):
        want, want_grad = np_roi_align(maps[lv - 2], boxes[i:i + 1], idx[i:i + 1], (3, 3),
                                       _SCALES[lv - 2], 2, True, dy[i:i + 1])
        np.testing.assert_allclose(got[i].numpy(), want[0], atol=1e-5, rtol=0)
        want_grads[lv - 2] += want_grad
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-5, rtol=0)


def test_multiscale_levels_argument_on_maps_of_dynamic_size_matches_numpy():
    # Levels given per box (here not the FPN rule: box 0 on the coarsest map) and maps whose
    # height and width are unknown when traced (a model taking any image size).
    maps = [_RNG.normal(size=(2, 48 // s, 64 // s, 2)) for s in (4, 8, 16, 32)]
    boxes = np.array([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 40.0, 60.0], [5.0, 2.0, 47.0, 30.0]])
    levels = np.array([3, 0, 1], np.int32)
    idx = np.array([0, 1, 1], np.int32)
    dy = _RNG.normal(size=(3, 3, 3, 2))
    spec = tf.TensorSpec([None, None, None, 2], tf.float64)

    @tf.function(input_signature=[[spec] * 4])
    def pooled_and_grads(tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            got = multiscale_roi_align(tensors, boxes, idx, 3, _SCALES, 2, aligned=False,
                                       levels=levels)
            loss = tf.reduce_sum(got * dy)
        return got, tape.gradient(loss, tensors)

    got, grads = pooled_and_grads([tf.constant(m) for m in maps])
    want_grads = [np.zeros_like(m) for m in maps]
    for i, lv in enumerate(levels):
        want, want_grad = np_roi_align(maps[lv], boxes[i:i + 1], idx[i:i + 1], (3, 3),
                                       _SCALES[lv], 2, False, dy[i:i + 1])
        np.testing.assert_allclose(got[i].numpy(), want[0], atol=1e-12, rtol=0)
        want_grads[lv] += want_grad
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-12, rtol=0)
