"""Floor profile: custom_ops.deform_conv2d forward + backward under `jit_compile=True`.

Same shape and inputs as `benchmarks/deform_conv.py` (modulated 3x3, [4, 64, 64, 64] -> 64,
float32). Every piece below runs as its own `tf.function(jit_compile=True)` and is timed in the
same interleaved run as `tf.nn.conv2d` forward + backward under `jit_compile=True` (the
baseline of the `<= 2.0x` goal) and our whole step under `jit_compile=True`. The pieces are what
any im2col formulation of a deformable convolution needs at least once per training step:

  * the three matmuls of the same multiply-adds as the convolution (columns @ kernel, and the
    kernel and column gradients), or the same as a stride-3 convolution of the columns laid out
    as a patch image (forward + both gradients), whichever is faster;
  * one pass that gathers the bilinear corners of every sample (here: into the columns);
  * one pass that scatters the samples' gradient back into the input (segment sum).

Each exists in two formulations (the neighbourhood rows `[N * (H + 1) * (W + 1), 4, C]` that
the op uses inside XLA, and four corner gathers / one scatter on the zero-padded map); the
floor takes the faster of each. Separate programs pay overheads the whole step does not (their
sum can exceed it), so the conservative floor printed first counts only the dots and one
gather, which no fusion removes (XLA CPU does not fuse a gather into a dot). The op also needs the bilinear positions and weights and the
offset/mask gradients (another contraction of the gathered corners), reported beside the floor
but not added to it. Also measured: a one-hot (dense matmul) sampling of one output row, the
formulation that avoids gathers and scatters in XLA, scaled to the whole batch, and our step
traced with the op's nested-XLA formulation (four corner gathers) instead of its plain ops.

Usage: python benchmarks/deform_conv_floor.py [--repeats 7] [--batch 4] [--size 64]
       [--channels 64]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from deform_conv import (  # noqa: E402
    _conv_step,
    _measure,
    _ours,
    _patch_conv,
    _train_step,
    inputs,
    parser,
)

from custom_ops import deform_conv as _module  # noqa: E402


def _pieces(data):
    """name -> zero-argument function of one piece (traced under jit_compile=True)."""
    x, offsets, mask, kernel, _ = data
    geo = _module._Geometry(x, offsets, kernel, mask, 1, 1, 1)
    st = geo.static
    batch, height, width = (int(d) for d in x.shape[:3])
    cg = geo.channels // geo.offset_groups
    rows, weights, d_dy, d_dx = _module._sampling(geo, offsets, batch, height, width, x.dtype)
    mask_rows = _module._mask_rows(geo, mask, x.dtype)
    prow, pweights, *_ = _module._sampling(geo, offsets, batch, height, width, x.dtype,
                                           padded=True)
    nb = _module._neighbourhoods(geo, x)
    cols, corners = _module._columns(geo, nb, rows, weights, mask_rows)
    del corners
    up = tf.reshape(tf.nn.conv2d(x, kernel, 1, "SAME"), [-1, geo.cout])
    _, grad_cols = _module._kernel_grads(geo, cols, kernel, up)
    grad_samples = tf.reshape(grad_cols, [-1, cg]) * mask_rows
    padded_rows = batch * (height + 2) * (width + 2)

    def scatter_padded():
        _, steps = _module._padded_rows(st, x)
        contributions = tf.reshape(pweights[:, :, None] * grad_samples[:, None, :], [-1, cg])
        return tf.math.unsorted_segment_sum(contributions, tf.reshape(prow[:, None] + steps, [-1]),
                                            num_segments=padded_rows)

    patch_conv = _patch_conv(geo, cols, kernel, up, x.shape)

    def one_hot_row():
        # Dense sampling matrix of one output row of one image: [Wo * K, H * W] (4 corners).
        r = rows[: width * geo.taps]
        local = r - r[0] + r[0] % ((height + 1) * (width + 1))  # rows of image 0
        top, left = local // (width + 1) - 1, local % (width + 1) - 1
        dense = tf.zeros([width * geo.taps, height * width])
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            yy, xx = top + dy, left + dx
            ok = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            dense += tf.one_hot(tf.where(ok, yy * width + xx, -1), height * width) \
                * weights[: width * geo.taps, k, None]
        image = tf.reshape(x[0], [height * width, geo.channels])
        return tf.matmul(dense, image)

    return {
        "3 matmuls (same MACs as conv2d)": lambda: (
            _module._matmul_kernel(geo, cols, kernel), _module._kernel_grads(geo, cols, kernel,
                                                                               up)),
        "the same as a stride-3 conv2d on a patch image": patch_conv,
        "gather: neighbourhood rows + weighted sum": lambda: _module._columns(
            geo, _module._neighbourhoods(geo, x), rows, weights, mask_rows)[0],
        "gather: 4 corner gathers on the padded map": lambda: _module._xla_columns_core(
            x, prow, pweights, mask_rows, st),
        "scatter: segment sum into neighbourhood rows": lambda: _module._fold_neighbourhoods(
            geo, tf.math.unsorted_segment_sum(
                tf.matmul(weights[:, :, None], grad_samples[:, None, :]), rows,
                num_segments=tf.shape(nb)[0]), batch, height, width),
        "scatter: segment sum into the padded map": scatter_padded,
        "positions and bilinear weights": lambda: _module._sampling(
            geo, offsets, batch, height, width, x.dtype),
        "offset/mask grads (corner gather + sums)": lambda: _module._sample_grads(
            geo, grad_cols, tf.gather(_module._neighbourhoods(geo, x), rows), rows, weights,
            d_dy, d_dx, mask_rows, tf.shape(nb)[0], tf.shape(offsets), tf.shape(mask))[1:],
        "one-hot sampling, 1 output row of 1 image": one_hot_row,
    }


def _inlined_nested_formulas(step):
    """`step` traced with the op's nested-XLA formulation (four corner gathers, scatter on the
    padded map; the crop kernels have no XLA kernel) instead of its plain ops: an alternative
    formulation for XLA, measured and not kept."""
    def traced(*args):
        saved = _module.use_nested_xla, _module._use_crop_kernels
        _module.use_nested_xla, _module._use_crop_kernels = (lambda: True), (lambda *a: False)
        try:
            return step(*args)
        finally:
            _module.use_nested_xla, _module._use_crop_kernels = saved
    return traced


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = inputs(args)
    x, n, s, c = data[0], args.batch, args.size, args.channels
    print(f"deform_conv2d floor under jit_compile=True, inputs {list(x.shape)} -> {c} channels, "
          f"float32, CPU threads: {os.cpu_count()}, median of {args.repeats} interleaved runs")

    cases = {"conv2d fwd+bwd (XLA)": tf.function(_conv_step, jit_compile=True),
             "ours fwd+bwd (XLA)": tf.function(_train_step(_ours), jit_compile=True),
             "alt: ours, nested-XLA formulas inlined": tf.function(
                 _inlined_nested_formulas(_train_step(_ours)), jit_compile=True)}
    whole = len(cases)
    cases.update({name: tf.function(fn, jit_compile=True) for name, fn in _pieces(data).items()})
    res = _measure({name: fn if i < whole else (lambda f: lambda *a: f())(fn)
                    for i, (name, fn) in enumerate(cases.items())}, data, args.repeats)
    base = res["conv2d fwd+bwd (XLA)"]
    print("\nmedian ms, ratio to conv2d forward + backward under XLA:")
    for name, t in res.items():
        print(f"  {name:<46s} {t * 1e3:8.1f} ms  {t / base:5.2f}x")
    gather = min(res["gather: neighbourhood rows + weighted sum"],
                 res["gather: 4 corner gathers on the padded map"])
    scatter = min(res["scatter: segment sum into neighbourhood rows"],
                  res["scatter: segment sum into the padded map"])
    matmuls = min(res["3 matmuls (same MACs as conv2d)"],
                  res["the same as a stride-3 conv2d on a patch image"])
    floor = matmuls + gather + scatter
    print(f"\ntwo-piece floor (no fusion removes either: XLA CPU does not fuse a gather into a "
          f"dot) = fastest matmuls + fastest gather = {(matmuls + gather) / base:.2f}x conv2d")
    print(f"floor = fastest matmuls + fastest gather + fastest scatter = {floor * 1e3:.1f} ms = "
          f"{floor / base:.2f}x conv2d (goal 2.0x); with positions and offset/mask grads: "
          f"{(floor + res['positions and bilinear weights'] + res['offset/mask grads (corner gather + sums)']) / base:.2f}x")
    one_hot = res["one-hot sampling, 1 output row of 1 image"] * n * s
    print(f"one-hot sampling of the whole batch (1 row x {n * s}): {one_hot * 1e3:.0f} ms = "
          f"{one_hot / base:.1f}x conv2d for the forward columns alone")


if __name__ == "__main__":
    main()
