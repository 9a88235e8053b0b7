"""Benchmark: custom_ops.deform_conv2d (modulated, 3x3) forward + backward.

Shape from issue 4: inputs [4, 64, 64, 64] -> 64 channels, 3x3, stride 1, padding 1, a mask
(DCNv2) and random offsets of a few pixels. Baselines measured in the same run, interleaved:
  * tf.nn.conv2d of the same shape, forward + backward (inputs and kernel gradients);
  * the autodiff reference `_deform_conv2d_reference` (per-corner gather_nd + einsum).
Each is a `tf.function` returning the output and all gradients; the median of several
interleaved repeats is reported, with ratios. Also reports ours with the columns kept between
the passes (`column_budget_bytes`), the forward pass alone and XLA
(`benchmarks/deform_conv_floor.py` profiles the XLA path).

With `--profile`, also times the steps of our forward + backward in isolation, in the same
run as `tf.nn.conv2d`: the three matmuls (forward, input and kernel gradients of the columns)
that any im2col formulation needs (and the same multiply-adds as one stride-3 convolution of
the columns laid out as a patch image), the sampling (positions; columns by 1x1 crop_and_resize and
by the nested XLA gathers), the offset/mask gradients and the input-gradient scatter (XLA's and
CropAndResizeGradImage).

Usage: python benchmarks/deform_conv.py [--repeats 7] [--batch 4] [--size 64] [--channels 64]
       [--profile]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from custom_ops import deform_conv as _module  # noqa: E402
from custom_ops.deform_conv import _deform_conv2d_reference, deform_conv2d  # noqa: E402


def _train_step(op):
    def step(x, offsets, mask, kernel, bias):
        with tf.GradientTape() as tape:
            tape.watch([x, offsets, mask, kernel, bias])
            out = op(x, offsets, kernel, bias, mask)
            loss = tf.reduce_sum(out * out)
        return loss, tape.gradient(loss, [x, offsets, mask, kernel, bias])
    return step


def _conv_step(x, offsets, mask, kernel, bias):
    del offsets, mask
    with tf.GradientTape() as tape:
        tape.watch([x, kernel, bias])
        out = tf.nn.conv2d(x, kernel, 1, "SAME") + bias
        loss = tf.reduce_sum(out * out)
    return loss, tape.gradient(loss, [x, kernel, bias])


def _forward(op):
    return lambda x, offsets, mask, kernel, bias: op(x, offsets, kernel, bias, mask)


def _conv_forward(x, offsets, mask, kernel, bias):
    return tf.nn.conv2d(x, kernel, 1, "SAME") + bias


def _ours(x, offsets, kernel, bias, mask):
    return deform_conv2d(x, offsets, kernel, bias, mask, padding=1)


def _ours_kept(x, offsets, kernel, bias, mask):
    """Columns kept between the passes (`column_budget_bytes` large enough)."""
    return deform_conv2d(x, offsets, kernel, bias, mask, padding=1, column_budget_bytes=1 << 40)


def _reference(x, offsets, kernel, bias, mask):
    return _deform_conv2d_reference(x, offsets, kernel, bias, mask, padding=1)


def _time(fn, args):
    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return time.perf_counter() - start


def _measure(cases, args, repeats):
    for fn in cases.values():  # trace and warm up
        _time(fn, args)
        _time(fn, args)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():  # interleaved
            times[name].append(_time(fn, args))
    return {name: float(np.median(t)) for name, t in times.items()}


def _neighbourhood_rows(rows, geo):
    """Rows of the padded map `(H + 2) * (W + 2)` as rows of `_module._neighbourhoods`."""
    h, w, g = geo.height, geo.width, geo.offset_groups
    pixel, group = rows // g, rows % g
    image, rest = pixel // ((h + 2) * (w + 2)), pixel % ((h + 2) * (w + 2))
    return ((image * (h + 1) + rest // (w + 2)) * (w + 1) + rest % (w + 2)) * g + group


@tf.function(jit_compile=True)
def _neighbourhood_columns(x, nb_rows, weights, mask_rows, static):
    corners = tf.gather(_module._neighbourhoods(static, x), nb_rows)  # [R, 4, Cg]
    cols = tf.reduce_sum(corners * (weights * mask_rows)[:, :, None], axis=1)
    return tf.reshape(cols, [-1, static.taps * static.channels])


@tf.function(jit_compile=True)
def _fused_columns_and_grads(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, static):
    padded, steps = _module._padded_rows(static, x)
    grad = tf.reshape(grad_cols, [-1, static.channels // static.offset_groups])
    corners = [tf.gather(padded, rows + steps[k]) for k in range(4)]
    w = weights * mask_rows
    cols = tf.add_n([w[:, k, None] * corners[k] for k in range(4)])
    grad_w = tf.stack([tf.reduce_sum(c * grad, -1) for c in corners], axis=1)
    grad_mask = tf.reduce_sum(grad_w * weights, 1)
    grad_w = grad_w * mask_rows
    grad_offsets = tf.stack([tf.reduce_sum(grad_w * d_dy, 1), tf.reduce_sum(grad_w * d_dx, 1)],
                            -1)
    return cols, grad * mask_rows, grad_offsets, grad_mask


def _patch_conv(geo, cols, kernel, up, x_shape):
    """The columns laid out as a patch image [N, kh Ho, kw Wo, C] and a function returning one
    stride-(kh, kw) `tf.nn.conv2d` of it with both gradients: the three matmuls' multiply-adds
    as oneDNN's convolution (a gather could write this layout directly)."""
    n, h, w = (int(d) for d in x_shape[:3])
    patches = tf.reshape(tf.transpose(tf.reshape(cols, [n, h, w, geo.kh, geo.kw, -1]),
                                      [0, 1, 3, 2, 4, 5]), [n, h * geo.kh, w * geo.kw, -1])
    up_image = tf.reshape(up, [n, h, w, geo.cout])

    def patch_conv():
        with tf.GradientTape() as tape:
            tape.watch([patches, kernel])
            out = tf.nn.conv2d(patches, kernel, (geo.kh, geo.kw), "VALID")
        return out, tape.gradient(out, [patches, kernel], output_gradients=up_image)
    return patch_conv


def _profile(data, repeats):
    """Median ms of each step of our forward + backward, isolated, beside tf.nn.conv2d."""
    x, offsets, mask, kernel, _ = data
    geo = _module._Geometry(x, offsets, kernel, mask, 1, 1, 1)
    st = geo.static
    rows, weights, d_dy, d_dx, mask_rows = _module._xla_sampling(x, offsets, mask, st)
    cols = _module._xla_columns(x, rows, weights, mask_rows, st)
    up = tf.reshape(tf.nn.conv2d(x, kernel, 1, "SAME"), [-1, geo.cout])
    _, grad_cols = _module._kernel_grads(geo, cols, kernel, up)
    y, xs, image = _module._crop_plan(geo, offsets, x.shape[0], x.dtype)
    images = _module._crop_images(geo, x)
    grad_samples = _module._xla_sample_grads(x, rows, weights, d_dy, d_dx, mask_rows, grad_cols,
                                             st, scatter=False)[0]
    size = tf.shape(images)
    nb_rows = _neighbourhood_rows(rows, geo)
    patch_conv = _patch_conv(geo, cols, kernel, up, x.shape)
    steps = {
        "conv2d fwd+bwd": lambda: _conv_step(*data),
        "3 matmuls": lambda: (_module._matmul_kernel(geo, cols, kernel),
                              _module._kernel_grads(geo, cols, kernel, up)),
        "3 matmuls as a stride-3 conv2d on patches": patch_conv,
        "positions (XLA)": lambda: _module._xla_sampling(x, offsets, mask, st),
        "columns (XLA gathers)": lambda: _module._xla_columns(x, rows, weights, mask_rows, st),
        "columns (1x1 crops)": lambda: _module._crop_columns(geo, images, y, xs, image,
                                                             mask_rows),
        "offset+mask grads (XLA)": lambda: _module._xla_sample_grads(
            x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, st, scatter=False),
        "  + input scatter (XLA)": lambda: _module._xla_sample_grads(
            x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, st),
        "input scatter (CropAndResizeGradImage)": lambda: tf.raw_ops.CropAndResizeGradImage(
            grads=grad_samples[:, None, None, :], boxes=_module._crop_boxes(geo, y, xs),
            box_ind=image, image_size=size, T=x.dtype),
        # Alternatives measured and not kept (issue 21): one gather of 2x2 neighbourhood rows
        # instead of four corner gathers, and the backward's column recomputation fused with
        # the offset/mask gradients in one XLA program (one gather pass instead of two).
        "alt: columns, one neighbourhood gather": lambda: _neighbourhood_columns(
            x, nb_rows, weights, mask_rows, st),
        "alt: columns + offset/mask grads fused": lambda: _fused_columns_and_grads(
            x, rows, weights, d_dy, d_dx, mask_rows, grad_cols, st),
    }
    res = _measure({name: tf.function(fn) for name, fn in steps.items()}, (), repeats)
    print("\nsteps in isolation (median ms; ours runs positions and columns in the forward and "
          "again in the backward):")
    for name, t in res.items():
        print(f"  {name:<40s} {t * 1e3:8.1f} ms  ({t / res['conv2d fwd+bwd']:.2f}x conv2d)")


def parser(description):
    """The command-line options shared with `deform_conv_floor.py`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    return parser


def inputs(args):
    """`(x, offsets, mask, kernel, bias)`: random, float32, offsets of a few pixels."""
    rng = np.random.default_rng(0)
    n, s, c = args.batch, args.size, args.channels
    x = tf.constant(rng.normal(size=(n, s, s, c)), tf.float32)
    offsets = tf.constant(rng.normal(size=(n, s, s, 18)) * 2.0, tf.float32)
    mask = tf.constant(rng.uniform(size=(n, s, s, 9)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, c, c)) * 0.05, tf.float32)
    bias = tf.constant(rng.normal(size=(c,)), tf.float32)
    return x, offsets, mask, kernel, bias


def main():
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--profile", action="store_true")
    args = cli.parse_args()
    data = inputs(args)
    x, c = data[0], args.channels
    print(f"deform_conv2d modulated 3x3, inputs {list(x.shape)} -> {c} channels, "
          f"float32, CPU threads: {os.cpu_count()}, median of {args.repeats} interleaved runs")

    train = _measure({
        "conv2d": tf.function(_conv_step),
        "ours": tf.function(_train_step(_ours)),
        "ours_kept": tf.function(_train_step(_ours_kept)),
        "reference": tf.function(_train_step(_reference)),
        "conv2d_xla": tf.function(_conv_step, jit_compile=True),
        "ours_xla": tf.function(_train_step(_ours), jit_compile=True),
    }, data, args.repeats)
    forward = _measure({
        "conv2d": tf.function(_conv_forward),
        "ours": tf.function(_forward(_ours)),
        "reference": tf.function(_forward(_reference)),
    }, data, args.repeats)
    for title, res in (("forward + backward", train), ("forward only", forward)):
        print(f"\n{title}:")
        for name, t in res.items():
            print(f"  {name:<12s} {t * 1e3:9.1f} ms")
        print(f"  ours / tf.nn.conv2d        = {res['ours'] / res['conv2d']:.2f}x")
        print(f"  reference / ours (speedup) = {res['reference'] / res['ours']:.2f}x")
        if "ours_kept" in res:
            print(f"  ours_kept / conv2d         = {res['ours_kept'] / res['conv2d']:.2f}x "
                  "(column_budget_bytes: columns kept between the passes)")
        if "ours_xla" in res:
            print(f"  ours_xla / conv2d_xla      = {res['ours_xla'] / res['conv2d_xla']:.2f}x")
    if args.profile:
        _profile(data, args.repeats)


if __name__ == "__main__":
    main()
