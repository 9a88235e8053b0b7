"""Tests of custom_ops.deform_conv2d against a NumPy transcription of torchvision's definition.

The oracle below is written from torchvision's `deform_conv2d` CPU kernel (NCHW input, OIHW
weight, offsets `[N, 2 * G * kh * kw, Ho, Wo]`, mask `[N, G * kh * kw, Ho, Wo]`): its
`bilinear_interpolate` (zero when h <= -1, h >= H, w <= -1 or w >= W; corners outside the image
read as zero), its `get_coordinate_weight` (offset gradient) and its col2im (input gradient),
with plain loops. The tests move the arrays between that layout and kcv's NHWC/HWIO one.
"""

import gc
import itertools
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from custom_ops import deform_conv2d
from custom_ops.deform_conv import _deform_conv2d_reference

from kcv_testing import check_gradients, check_tflite

# --------------------------------------------------------------------------- NumPy oracle


def _bilinear(im, h, w):
    """torchvision `bilinear_interpolate` on `im [C, H, W]` (vector over channels)."""
    height, width = im.shape[1:]
    if h <= -1 or height <= h or w <= -1 or width <= w:
        return np.zeros(im.shape[0])
    h_low, w_low = int(np.floor(h)), int(np.floor(w))
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    zero = np.zeros(im.shape[0])
    v1 = im[:, h_low, w_low] if h_low >= 0 and w_low >= 0 else zero
    v2 = im[:, h_low, w_high] if h_low >= 0 and w_high <= width - 1 else zero
    v3 = im[:, h_high, w_low] if h_high <= height - 1 and w_low >= 0 else zero
    v4 = im[:, h_high, w_high] if h_high <= height - 1 and w_high <= width - 1 else zero
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def _coordinate_weight(im, h, w, is_y):
    """torchvision `get_coordinate_weight`: d bilinear / d h (is_y) or d w, per channel."""
    height, width = im.shape[1:]
    if h <= -1 or height <= h or w <= -1 or width <= w:
        return np.zeros(im.shape[0])
    h_low, w_low = int(np.floor(h)), int(np.floor(w))
    h_high, w_high = h_low + 1, w_low + 1
    zero = np.zeros(im.shape[0])
    v1 = im[:, h_low, w_low] if h_low >= 0 and w_low >= 0 else zero
    v2 = im[:, h_low, w_high] if h_low >= 0 and w_high <= width - 1 else zero
    v3 = im[:, h_high, w_low] if h_high <= height - 1 and w_low >= 0 else zero
    v4 = im[:, h_high, w_high] if h_high <= height - 1 and w_high <= width - 1 else zero
    if is_y:
        dx = w - w_low
        return dx * (v4 - v2) + (1 - dx) * (v3 - v1)
    dy = h - h_low
    return dy * (v4 - v3) + (1 - dy) * (v2 - v1)


def _col2im(grad_im, h, w, value):
    """torchvision's col2im: adds `value [C]` to the pixels around (h, w) with bilinear weights."""
    height, width = grad_im.shape[1:]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yp, xp = int(h) + dy, int(w) + dx
            if (0 <= yp < height and 0 <= xp < width and abs(h - yp) < 1 and abs(w - xp) < 1):
                grad_im[:, yp, xp] += (1 - abs(h - yp)) * (1 - abs(w - xp)) * value


def numpy_deform_conv2d(x, weight, offset, mask, bias, stride, pad, dil, upstream=None):
    """torchvision's deform_conv2d in NCHW/OIHW, forward and (given `upstream`) backward.

    Returns `out` or `(out, grads)` with grads for (x, offset, weight, bias, mask).
    """
    n_batch, channels, height, width = x.shape
    out_channels, cig, kh, kw = weight.shape
    groups = channels // cig
    cog = out_channels // groups
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    cpg = channels // offset_groups
    out_h, out_w = offset.shape[2:]
    if mask is None:
        mask_ = np.ones((n_batch, offset_groups * taps, out_h, out_w))
    else:
        mask_ = mask
    out = np.zeros((n_batch, out_channels, out_h, out_w))
    gx, goff, gw, gm = (np.zeros_like(a) for a in (x, offset, weight, mask_))
    for b, ho, wo, i, j in itertools.product(range(n_batch), range(out_h), range(out_w),
                                             range(kh), range(kw)):
        k = i * kw + j
        for og in range(offset_groups):
            chans = slice(og * cpg, (og + 1) * cpg)
            oy = offset[b, og * 2 * taps + 2 * k, ho, wo]
            ox = offset[b, og * 2 * taps + 2 * k + 1, ho, wo]
            m = mask_[b, og * taps + k, ho, wo]
            y = ho * stride[0] - pad[0] + i * dil[0] + oy
            xx = wo * stride[1] - pad[1] + j * dil[1] + ox
            val = _bilinear(x[b, chans], y, xx)  # [cpg]
            for c_local in range(cpg):
                c = og * cpg + c_local
                gr, ci = divmod(c, cig)
                outs = slice(gr * cog, (gr + 1) * cog)
                w_vec = weight[outs, ci, i, j]
                out[b, outs, ho, wo] += w_vec * m * val[c_local]
                if upstream is None:
                    continue
                up = upstream[b, outs, ho, wo]
                dcol = float(np.dot(up, w_vec))
                gw[outs, ci, i, j] += up * m * val[c_local]
                gm[b, og * taps + k, ho, wo] += dcol * val[c_local]
                single = x[b, c:c + 1]
                goff[b, og * 2 * taps + 2 * k, ho, wo] += (
                    dcol * m * _coordinate_weight(single, y, xx, True)[0])
                goff[b, og * 2 * taps + 2 * k + 1, ho, wo] += (
                    dcol * m * _coordinate_weight(single, y, xx, False)[0])
                _col2im(gx[b, c:c + 1], y, xx, np.array([dcol * m]))
    if bias is not None:
        out += bias[None, :, None, None]
    if upstream is None:
        return out
    gb = upstream.sum(axis=(0, 2, 3))
    return out, (gx, goff, gw, gb, gm if mask is not None else None)


# layout helpers: kcv (NHWC, HWIO) <-> torchvision (NCHW, OIHW)
def _nchw(a):
    return np.transpose(a, (0, 3, 1, 2))


def _nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def numpy_forward_nhwc(x, offsets, kernel, bias, mask, stride, dil, pad=1):
    """The oracle's forward pass on kcv-layout (NHWC / HWIO) float64 arrays."""
    return _nhwc(numpy_deform_conv2d(
        _nchw(x), np.transpose(kernel, (3, 2, 0, 1)), _nchw(offsets),
        None if mask is None else _nchw(mask), bias, (stride, stride), (pad, pad), (dil, dil)))


def _case(rng, *, stride, dil, offset_groups, groups, modulated, pad=1, scale=2.0,
          shape=(2, 6, 7, 4), out_channels=4, ksize=(3, 3)):
    n, h, w, c = shape
    kh, kw = ksize
    out_h = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    x = rng.normal(size=shape)
    kernel = rng.normal(size=(kh, kw, c // groups, out_channels))
    # Offsets large enough to push many samples outside the input; integer + fractional part in
    # [0.1, 0.9] keeps samples off the kinks of the bilinear function (finite differences).
    whole = np.round(rng.normal(size=(n, out_h, out_w, 2 * offset_groups * kh * kw)) * scale)
    offsets = whole + rng.uniform(0.1, 0.9, size=whole.shape) * rng.choice([-1, 1], whole.shape)
    mask = rng.uniform(0.1, 1.0, size=(n, out_h, out_w, offset_groups * kh * kw)) if modulated \
        else None
    bias = rng.normal(size=out_channels)
    return x, offsets, kernel, bias, mask


def _assert_matches_numpy(out, grads, x, offsets, kernel, bias, mask, stride, dil, upstream,
                          label="", atol=1e-6):
    """Forward and the gradients (inputs, offsets, kernel, bias[, mask]) against the oracle at
    padding 1, float64 (1e-6 unless told)."""
    expected, expected_grads = numpy_deform_conv2d(
        _nchw(x), np.transpose(kernel, (3, 2, 0, 1)), _nchw(offsets),
        None if mask is None else _nchw(mask), bias, (stride, stride), (1, 1), (dil, dil),
        upstream=_nchw(upstream))
    np.testing.assert_allclose(out.numpy(), _nhwc(expected), atol=atol, rtol=0)
    gx, goff, gw, gb, gm = expected_grads
    want = [_nhwc(gx), _nhwc(goff), np.transpose(gw, (2, 3, 1, 0)), gb]
    if mask is not None:
        want.append(_nhwc(gm))
    assert len(grads) == len(want)
    for name, got, exp in zip(["inputs", "offsets", "kernel", "bias", "mask"], grads, want):
        np.testing.assert_allclose(got.numpy(), exp, atol=atol, rtol=0,
                                   err_msg=f"gradient for {name} {label}")


_GRID = list(itertools.product((1, 2), (1, 2), (1, 2), (1, 2), (False, True)))


@pytest.mark.parametrize("stride,dil,offset_groups,groups,modulated", _GRID)
def test_forward_and_gradients_match_numpy_definition(stride, dil, offset_groups, groups,
                                                      modulated):
    rng = np.random.default_rng(
        _GRID.index((stride, dil, offset_groups, groups, modulated)))
    x, offsets, kernel, bias, mask = _case(rng, stride=stride, dil=dil,
                                           offset_groups=offset_groups, groups=groups,
                                           modulated=modulated)
    args = [tf.constant(a) for a in (x, offsets, kernel, bias) + ((mask,) if modulated else ())]
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = deform_conv2d(*args[:4], mask=args[4] if modulated else None, strides=stride,
                            padding=1, dilation_rate=dil)
    upstream = rng.normal(size=out.shape)
    grads = tape.gradient(out, args, output_gradients=tf.constant(upstream))
    _assert_matches_numpy(out, grads, x, offsets, kernel, bias, mask, stride, dil, upstream)
    # The case really has samples fully outside the input and samples straddling its border.
    ys = (np.arange(out.shape[1])[None, :, None, None, None] * stride - 1
          + np.repeat(np.arange(3), 3) * dil
          + offsets[..., 0::2].reshape(*out.shape[:3], offset_groups, 9))
    assert np.any((ys <= -1) | (ys >= x.shape[1]))
    assert np.any((ys > -1) & (ys < 0)) and np.any((ys > x.shape[1] - 1) & (ys < x.shape[1]))


def test_float32_forward_matches_numpy_and_reference():
    rng = np.random.default_rng(7)
    x, offsets, kernel, bias, mask = _case(rng, stride=2, dil=1, offset_groups=2, groups=2,
                                           modulated=True)
    expected = numpy_forward_nhwc(x, offsets, kernel, bias, mask, stride=2, dil=1)
    f32 = [a.astype(np.float32) for a in (x, offsets, kernel, bias, mask)]
    kwargs = dict(strides=2, padding=1)
    got = deform_conv2d(*f32[:4], mask=f32[4], **kwargs)
    ref = _deform_conv2d_reference(*f32[:4], mask=f32[4], **kwargs)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ref.numpy(), expected, atol=1e-4, rtol=0)


def test_reference_matches_numpy_definition_float64():
    """The autodiff reference (used by the benchmark) is itself checked against the oracle."""
    rng = np.random.default_rng(8)
    x, offsets, kernel, bias, mask = _case(rng, stride=1, dil=2, offset_groups=2, groups=1,
                                           modulated=True)
    expected = numpy_forward_nhwc(x, offsets, kernel, bias, mask, stride=1, dil=2)
    got = _deform_conv2d_reference(x, offsets, kernel, bias, mask, padding=1, dilation_rate=2)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_hand_computed_samples():
    """1x1 kernel, one channel, 3x3 image: samples at half pixels inside and across the edges."""
    image = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # rows [1 2 3] [4 5 6] [7 8 9]
    kernel = np.ones((1, 1, 1, 1))
    # (dy, dx) per output pixel (row-major over the 3x3 output).
    offsets = np.array([
        [0.5, 0.0],    # (0, 0) -> y 0.5: (1 + 4) / 2 = 2.5
        [0.0, 0.5],    # (0, 1) -> x 1.5: (2 + 3) / 2 = 2.5
        [-0.5, 0.0],   # (0, 2) -> y -0.5: half of pixel 3 = 1.5 (corner above is zero)
        [0.0, -1.0],   # (1, 0) -> x -1: exactly on the -1 border -> 0
        [0.25, 0.75],  # (1, 1) -> (1.25, 1.75): .75*(.25*5+.75*6) + .25*(.25*8+.75*9) = 6.5
        [0.0, 0.5],    # (1, 2) -> x 2.5: half of pixel 6 = 3
        [0.5, 0.0],    # (2, 0) -> y 2.5: half of pixel 7 = 3.5
        [1.0, 0.0],    # (2, 1) -> y 3 = H -> 0
        [-0.99, -0.5],  # (2, 2) -> (1.01, 1.5): .99*(5.5) + .01*(8.5) = 5.53
    ]).reshape(1, 3, 3, 2)
    got = deform_conv2d(image, offsets, kernel).numpy().reshape(3, 3)
    expected = np.array([[2.5, 2.5, 1.5], [0.0, 6.5, 3.0], [3.5, 0.0, 5.53]])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    mask = np.full((1, 3, 3, 1), 0.5)
    got = deform_conv2d(image, offsets, kernel, mask=mask).numpy().reshape(3, 3)
    np.testing.assert_allclose(got, expected * 0.5, atol=1e-12)


@pytest.mark.parametrize(
    "stride,dil,groups,padding",
    [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 2), (1, 1, 2, 0), (2, 1, 4, "same"),
     (1, 2, 2, "same"), (2, 1, 1, "valid"), ((2, 1), (1, 1), 1, (1, 0))],
)
@pytest.mark.parametrize("modulated", [False, True])
def test_zero_offsets_equal_conv2d(stride, dil, groups, padding, modulated):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 8, 8)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 8 // groups, 8)).astype(np.float32)
    if isinstance(padding, str):
        xp, tf_padding = x, padding.upper()
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        xp, tf_padding = np.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]]), "VALID"
    expected = tf.nn.conv2d(xp, kernel, stride, tf_padding, dilations=dil).numpy()
    n, ho, wo, _ = expected.shape
    offsets = np.zeros((n, ho, wo, 18), np.float32)
    mask = np.ones((n, ho, wo, 9), np.float32) if modulated else None
    got = deform_conv2d(x, offsets, kernel, mask=mask, strides=stride, padding=padding,
                        dilation_rate=dil).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("groups,offset_groups,modulated", [(1, 1, True), (2, 2, False)])
def test_gradient_check_float64(seed, groups, offset_groups, modulated):
    # A 4x4 input (2x2 outputs): finite differences cost two calls per input element, and the
    # samples still fall inside, across the border and outside (the oracle tests cover more).
    rng = np.random.default_rng(seed)
    x, offsets, kernel, bias, mask = _case(rng, stride=2, dil=1, offset_groups=offset_groups,
                                           groups=groups, modulated=modulated,
                                           shape=(1, 4, 4, 4), out_channels=2)
    args = [x, offsets, kernel, bias] + ([mask] if modulated else [])

    @tf.function  # compute_gradient calls it once per input element: trace once
    def fn(x_, off_, k_, b_, *m_):
        return deform_conv2d(x_, off_, k_, b_, mask=m_[0] if m_ else None, strides=2,
                             padding=1)

    check_gradients(fn, args)


def test_xla_and_tf_function_match_eager():
    rng = np.random.default_rng(11)
    x, offsets, kernel, bias, mask = (
        a.astype(np.float32) for a in _case(rng, stride=1, dil=1, offset_groups=2, groups=2,
                                            modulated=True))

    def loss_and_grads(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            out = deform_conv2d(args[0], args[1], args[2], args[3], mask=args[4], padding=1)
            loss = tf.reduce_sum(tf.sin(out))
        return [out] + tape.gradient(loss, list(args))

    args = [tf.constant(a) for a in (x, offsets, kernel, bias, mask)]
    eager = loss_and_grads(*args)
    for fn in (tf.function(loss_and_grads), tf.function(loss_and_grads, jit_compile=True)):
        for e, g in zip(eager, fn(*args)):
            np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-4, rtol=1e-4)


def test_dynamic_shapes_in_tf_function():
    rng = np.random.default_rng(12)
    x, offsets, kernel, bias, mask = (
        a.astype(np.float32) for a in _case(rng, stride=1, dil=1, offset_groups=1, groups=1,
                                            modulated=True))
    fn = tf.function(lambda a, o, m: deform_conv2d(a, o, kernel, bias, m, padding=1),
                     input_signature=[tf.TensorSpec([None, None, None, 4]),
                                      tf.TensorSpec([None, None, None, 18]),
                                      tf.TensorSpec([None, None, None, 9])])
    expected = deform_conv2d(x, offsets, kernel, bias, mask, padding=1)
    np.testing.assert_allclose(fn(x, offsets, mask).numpy(), expected.numpy(), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="spatial size"):
        fn(x, offsets[:, :-1], mask[:, :-1])


def test_float16_inputs_return_float16():
    rng = np.random.default_rng(5)
    x, offsets, kernel, bias, mask = _case(rng, stride=1, dil=1, offset_groups=1, groups=1,
                                           modulated=True, shape=(1, 16, 16, 4), scale=6.0)
    x = x * 100.0  # sums of 36 products of ~1e2 * 1 stay finite in float16; positions up to 16
    expected = deform_conv2d(*(a.astype(np.float32) for a in (x, offsets, kernel, bias)),
                             mask=mask.astype(np.float32), padding=1).numpy()
    half = [tf.constant(a.astype(np.float16)) for a in (x, offsets, kernel, bias, mask)]
    with tf.GradientTape() as tape:
        tape.watch(half)
        got = deform_conv2d(*half[:4], mask=half[4], padding=1)
    grads = tape.gradient(got, half)
    assert got.dtype == tf.float16
    assert all(g.dtype == tf.float16 and np.all(np.isfinite(g.numpy())) for g in grads)
    # Inputs were rounded to float16 before the float32 computation: compare relative to scale.
    np.testing.assert_allclose(got.numpy().astype(np.float32), expected,
                               atol=2e-2 * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("path", ["xla_kernels", "plain_ops"])
def test_columns_are_not_kept_alive_between_forward_and_backward(path, monkeypatch):
    """Under a live GradientTape the forward pass's sampled columns (and, on the plain path,
    the gathered corners) are freed as soon as the op returns; the backward pass computes its
    own (a second call). Eager mode uses the nested XLA kernels unless told otherwise."""
    from custom_ops import deform_conv as module

    produced = []
    if path == "plain_ops":
        monkeypatch.setattr(module, "use_nested_xla", lambda: False)
        original = module._columns

        def spy(*args, **kwargs):
            cols, corners = original(*args, **kwargs)
            produced.append((weakref.ref(cols), weakref.ref(corners)))
            return cols, corners

        monkeypatch.setattr(module, "_columns", spy)
    else:
        original = module._xla_columns

        def spy(*args, **kwargs):
            cols = original(*args, **kwargs)
            produced.append((weakref.ref(cols),))
            return cols

        monkeypatch.setattr(module, "_xla_columns", spy)
    rng = np.random.default_rng(13)
    x, offsets, kernel, bias, mask = (
        tf.constant(a) for a in _case(rng, stride=1, dil=1, offset_groups=1, groups=1,
                                      modulated=True))
    with tf.GradientTape() as tape:
        tape.watch([x, offsets, mask])
        out = deform_conv2d(x, offsets, kernel, bias, mask, padding=1)
    gc.collect()
    assert len(produced) == 1
    assert all(ref() is None for ref in produced[0]), "forward columns kept alive by the tape"
    grads = tape.gradient(out, [x, offsets, mask])
    assert len(produced) == 2  # recomputed in the backward pass
    with tf.GradientTape() as tape:
        tape.watch([x, offsets, mask])
        ref_out = _deform_conv2d_reference(x, offsets, kernel, bias, mask, padding=1)
    for g, e in zip(grads, tape.gradient(ref_out, [x, offsets, mask])):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-8)


_PATH_CASES = [(2, 1, 2, 2, True), (1, 2, 1, 1, False), (1, 1, 2, 1, True)]


@pytest.mark.parametrize("path", ["xla_kernels", "plain_ops", "inside_xla", "saving"])
@pytest.mark.parametrize("stride,dil,offset_groups,groups,modulated", _PATH_CASES)
def test_every_kernel_path_matches_numpy_definition(stride, dil, offset_groups, groups,
                                                     modulated, path, monkeypatch):
    """Outside XLA the sampling side runs as nested XLA programs ("xla_kernels", what eager
    and a plain tf.function use); while a SavedModel is written (TFLite export), or when told
    so, the op uses plain TF ops; inside `jit_compile=True` the plain ops join the caller's
    program. All give torchvision's definition, forward and the five gradients (float64)."""
    from custom_ops import _context
    from custom_ops import deform_conv as module

    calls = []
    original = module._xla_sampling
    monkeypatch.setattr(module, "_xla_sampling", lambda *a: calls.append(1) or original(*a))
    if path == "plain_ops":
        monkeypatch.setattr(module, "use_nested_xla", lambda: False)
    if path == "saving":  # what tf.saved_model.save (hence export.to_tflite) looks like
        monkeypatch.setattr(_context, "in_save_context", lambda: True)
    rng = np.random.default_rng(100 + _PATH_CASES.index((stride, dil, offset_groups, groups,
                                                         modulated)))
    x, offsets, kernel, bias, mask = _case(rng, stride=stride, dil=dil,
                                           offset_groups=offset_groups, groups=groups,
                                           modulated=modulated)
    args = [tf.constant(a) for a in (x, offsets, kernel, bias) + ((mask,) if modulated else ())]

    def fwd_bwd(upstream, *values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = deform_conv2d(*values[:4], mask=values[4] if modulated else None,
                                strides=stride, padding=1, dilation_rate=dil)
        return out, tape.gradient(out, values, output_gradients=upstream)

    probe = deform_conv2d(*args[:4], mask=args[4] if modulated else None, strides=stride,
                          padding=1, dilation_rate=dil)
    calls.clear()
    upstream = rng.normal(size=probe.shape)
    fn = tf.function(fwd_bwd, jit_compile=True) if path == "inside_xla" else fwd_bwd
    out, grads = fn(tf.constant(upstream), *args)
    assert len(calls) == (2 if path == "xla_kernels" else 0)  # forward + backward
    _assert_matches_numpy(out, grads, x, offsets, kernel, bias, mask, stride, dil, upstream,
                          path)


@pytest.mark.parametrize("stride,dil,offset_groups,groups,modulated", _PATH_CASES)
def test_float32_crop_kernels_match_numpy_definition(stride, dil, offset_groups, groups,
                                                     modulated, monkeypatch):
    """float32 outside XLA: columns by 1x1 crop_and_resize, input gradient by
    CropAndResizeGradImage. Some offsets are whole numbers, so samples fall exactly on pixels,
    on the row/column -1 and on H / W (the border rule), and on the padded frame's edge."""
    from custom_ops import deform_conv as module

    calls = []
    original = module._crop_plan
    monkeypatch.setattr(module, "_crop_plan", lambda *a: calls.append(1) or original(*a))
    rng = np.random.default_rng(200 + _PATH_CASES.index((stride, dil, offset_groups, groups,
                                                         modulated)))
    x, offsets, kernel, bias, mask = (
        None if a is None else a.astype(np.float32)
        for a in _case(rng, stride=stride, dil=dil, offset_groups=offset_groups, groups=groups,
                       modulated=modulated))
    offsets[0] = np.round(offsets[0])  # whole-pixel offsets in the first image
    offsets[1, 0, :, 0::2] = -1.0  # first output row: taps on rows -2, -1 (zero) and up
    offsets[1, -1, :, 0::2] = x.shape[1] - 1.0  # last output row: taps on rows >= H - 1
    args = [tf.constant(a) for a in (x, offsets, kernel, bias) + ((mask,) if modulated else ())]
    probe = deform_conv2d(*args[:4], mask=args[4] if modulated else None, strides=stride,
                          padding=1, dilation_rate=dil)
    upstream = rng.normal(size=probe.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = deform_conv2d(*args[:4], mask=args[4] if modulated else None, strides=stride,
                            padding=1, dilation_rate=dil)
    grads = tape.gradient(out, args, output_gradients=tf.constant(upstream))
    assert len(calls) == 3  # probe, forward, backward
    _assert_matches_numpy(out, grads, *(None if a is None else a.astype(np.float64)
                                        for a in (x, offsets, kernel, bias, mask)),
                          stride, dil, upstream.astype(np.float64), "float32", atol=1e-4)


class _DeformOp(keras.layers.Layer):
    """Test-only wrapper: offsets and mask predicted from the input by fixed convolutions, then
    the op with a fixed kernel, inside a single-input Keras model for TFLite."""

    def __init__(self, offset_kernel, mask_kernel, kernel, bias, **kwargs):
        super().__init__(**kwargs)
        self._weights = (offset_kernel, mask_kernel, kernel, bias)

    def call(self, x):
        offset_kernel, mask_kernel, kernel, bias = self._weights
        offsets = tf.nn.conv2d(x, offset_kernel, 2, "SAME")
        mask = tf.sigmoid(tf.nn.conv2d(x, mask_kernel, 2, "SAME"))
        return deform_conv2d(x, offsets, kernel, bias, mask, strides=2, padding=1)


def test_tflite_builtins_only_and_litert_parity():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
    # Offsets of a few pixels (some samples leave the 8x8 input), groups=2, offset_groups=2.
    weights = [rng.normal(size=s).astype(np.float32) * f for s, f in
               (((3, 3, 4, 36), 0.5), ((3, 3, 4, 18), 1.0), ((3, 3, 2, 4), 1.0), ((4,), 1.0))]
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, _DeformOp(*weights)(inputs))
    offsets = tf.nn.conv2d(x, weights[0], 2, "SAME")
    mask = tf.sigmoid(tf.nn.conv2d(x, weights[1], 2, "SAME"))
    assert np.abs(offsets).max() > 4
    expected = numpy_forward_nhwc(
        *(np.asarray(a, np.float64) for a in (x, offsets, weights[2], weights[3], mask)),
        stride=2, dil=1)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-4)
    check_tflite(model, [x], atol=1e-4)


# --------------------------------------------------------------------------- bad input

_X = np.zeros((1, 6, 6, 4), np.float32)
_K = np.zeros((3, 3, 4, 4), np.float32)
_OFF = np.zeros((1, 6, 6, 18), np.float32)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(offsets=np.zeros((1, 6, 6, 17), np.float32)), ValueError,
         r"`offsets` must have 2 \* offset_groups \* kh \* kw channels.*offsets.shape=\(1, 6, 6, 17\)"),
        (dict(mask=np.zeros((1, 6, 6, 18), np.float32)), ValueError,
         r"`mask` must have offset_groups \* kh \* kw = 1 \* 3 \* 3 = 9 channels.*\(1, 6, 6, 18\)"),
        (dict(offsets=np.zeros((1, 5, 6, 18), np.float32)), ValueError,
         r"`offsets` must have shape \[N, H_out, W_out, .*\(H_out, W_out\) = \(6, 6\).*"
         r"offsets.shape=\(1, 5, 6, 18\)"),
        (dict(strides=2), ValueError, r"\(H_out, W_out\) = \(3, 3\)"),
        (dict(mask=np.zeros((1, 6, 5, 9), np.float32)), ValueError,
         r"`mask` must have shape .*mask.shape=\(1, 6, 5, 9\)"),
        (dict(offsets=np.zeros((2, 6, 6, 18), np.float32)), ValueError,
         r"`offsets` must have the batch size of `inputs` \(1\)"),
        (dict(kernel=np.zeros((3, 3, 3, 4), np.float32)), ValueError,
         r"multiple of `kernel.shape\[2\]`.*inputs.shape=\(1, 6, 6, 4\), kernel.shape=\(3, 3, 3, 4\)"),
        (dict(kernel=np.zeros((3, 3, 2, 3), np.float32)), ValueError,
         r"`kernel.shape\[3\]` must be divisible by groups=2"),
        (dict(offsets=np.zeros((1, 6, 6, 54), np.float32)), ValueError,
         r"divisible by offset_groups=3"),
        (dict(inputs=np.zeros((6, 6, 4), np.float32)), ValueError,
         r"`inputs` must be a rank-4 tensor. Received: inputs.shape=\(6, 6, 4\)"),
        (dict(bias=np.zeros((3,), np.float32)), ValueError,
         r"`bias` must have shape \[C_out\] = \[4\]. Received: bias.shape=\(3,\)"),
        (dict(strides=0), ValueError, r"`strides` must be a positive int.*strides=0"),
        (dict(dilation_rate=(1, 2, 3)), ValueError, r"`dilation_rate` must be.*\(1, 2, 3\)"),
        (dict(padding="full"), ValueError, r"`padding` must be an int.*padding='full'"),
        (dict(padding=-1), ValueError, r"`padding` must be a non-negative int.*padding=-1"),
        (dict(padding="valid", kernel=np.zeros((7, 7, 4, 4), np.float32),
              offsets=np.zeros((1, 1, 1, 98), np.float32)), ValueError,
         r"output height is 0 < 1"),
        (dict(inputs=np.zeros((1, 6, 6, 4), np.int32)), TypeError,
         r"`inputs` must be a float tensor. Received: inputs.dtype=<dtype: 'int32'>"),
    ],
)
def test_bad_input_errors(kwargs, error, match):
    args = dict(inputs=_X, offsets=_OFF, kernel=_K, padding=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        deform_conv2d(**args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("budget,kept", [(1 << 30, True), (100, False)])
def test_column_budget_keeps_columns_and_matches_numpy(dtype, budget, kept, monkeypatch):
    """`column_budget_bytes`: columns that fit (here 2*6*7*9*4 values) are sampled once, in the
    forward pass, and the backward pass reuses them; columns that do not fit are sampled again.
    float64 samples by the nested XLA gathers, float32 by the crop kernels (its backward always
    gathers with XLA when it samples again). Same results as the NumPy definition either way."""
    from custom_ops import deform_conv as module

    gathers = []
    original = module._xla_columns
    monkeypatch.setattr(module, "_xla_columns", lambda *a: gathers.append(1) or original(*a))
    rng = np.random.default_rng(300)
    x, offsets, kernel, bias, mask = (
        a.astype(dtype) for a in _case(rng, stride=1, dil=1, offset_groups=2, groups=2,
                                       modulated=True))
    args = [tf.constant(a) for a in (x, offsets, kernel, bias, mask)]
    upstream = rng.normal(size=(2, 6, 7, 4)).astype(dtype)
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = deform_conv2d(*args, padding=1, column_budget_bytes=budget)
    forward_gathers = len(gathers)
    grads = tape.gradient(out, args, output_gradients=tf.constant(upstream))
    backward_gathers = len(gathers) - forward_gathers
    assert forward_gathers == (1 if dtype == np.float64 else 0)
    assert backward_gathers == (0 if kept else 1)
    _assert_matches_numpy(out, grads, *(a.astype(np.float64) for a in (x, offsets, kernel, bias,
                                                                        mask)),
                          1, 1, upstream.astype(np.float64), f"budget {budget}",
                          atol=1e-6 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("budget", [-1, 1.5, True, "1e6"])
def test_bad_column_budget_errors(budget):
    with pytest.raises(ValueError, match=r"`column_budget_bytes` must be a non-negative int. "
                                         rf"Received: column_budget_bytes={budget!r}"):
        deform_conv2d(_X, _OFF, _K, padding=1, column_budget_bytes=budget)
