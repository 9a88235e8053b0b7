"""RoIAlign speed and memory: custom_ops.roi_align vs crop_and_resize + 2x2 average pooling.

Forward + backward (gradient with respect to the features) for 512 RoIs on [2, 50, 68, 256]
features, 7x7 output, sampling_ratio=2, spatial_scale=1/16, both in `tf.function`, measured in
the same run, interleaved, median of repeats; also forward alone, so that the backward is the
difference. Then time against K = 64 ... 4096, and the peak memory (max RSS of a fresh process
per K and op) of the custom gradient vs the autodiff reference.

Run: .venv/bin/python benchmarks/roi.py [--quick]
"""

import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import custom_ops  # noqa: E402

N, H, W, C = 2, 50, 68, 256
SCALE = 1 / 16
IMAGE_H, IMAGE_W = H / SCALE, W / SCALE
OUT, RATIO = 7, 2


def make_inputs(k, seed=0):
    rng = np.random.default_rng(seed)
    feats = tf.constant(rng.normal(size=(N, H, W, C)).astype(np.float32))
    y1 = rng.uniform(0, IMAGE_H * 0.8, k)
    x1 = rng.uniform(0, IMAGE_W * 0.8, k)
    h = rng.uniform(16, IMAGE_H * 0.5, k)
    w = rng.uniform(16, IMAGE_W * 0.5, k)
    boxes = np.stack([y1, x1, np.minimum(y1 + h, IMAGE_H), np.minimum(x1 + w, IMAGE_W)], 1)
    idx = rng.integers(0, N, k).astype(np.int32)
    dy = tf.constant(rng.normal(size=(k, OUT, OUT, C)).astype(np.float32))
    return feats, tf.constant(boxes.astype(np.float32)), tf.constant(idx), dy


def ours_fn(op=custom_ops.roi_align):
    @tf.function
    def step(feats, boxes, idx, dy):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = op(feats, boxes, idx, OUT, SCALE, RATIO, True)
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, feats)

    return step


def baseline_fn():
    """The usual TF formulation: crop_and_resize to 2*7 then 2x2 average pooling."""

    @tf.function
    def step(feats, boxes, idx, dy):
        norm = boxes / tf.constant([IMAGE_H, IMAGE_W, IMAGE_H, IMAGE_W], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(feats)
            crops = tf.image.crop_and_resize(feats, norm, idx, [2 * OUT, 2 * OUT])
            out = tf.nn.avg_pool2d(crops, 2, 2, "VALID")
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, feats)

    return step


def forward_fn(op=None):
    """Forward only: ours (op) or, with op=None, the baseline."""

    @tf.function
    def step(feats, boxes, idx):
        if op is not None:
            return op(feats, boxes, idx, OUT, SCALE, RATIO, True)
        norm = boxes / tf.constant([IMAGE_H, IMAGE_W, IMAGE_H, IMAGE_W], tf.float32)
        crops = tf.image.crop_and_resize(feats, norm, idx, [2 * OUT, 2 * OUT])
        return tf.nn.avg_pool2d(crops, 2, 2, "VALID")

    return step


def timed(fn, args):
    start = time.perf_counter()
    result = fn(*args)
    _ = (result[-1] if isinstance(result, tuple) else result).numpy()
    return time.perf_counter() - start


def compare(k, repeats, split=False):
    """Median seconds {name: t}; fwd+bwd for ours/base, and forward only when `split`."""
    args = make_inputs(k)
    fns = {"ours": (ours_fn(), args), "base": (baseline_fn(), args)}
    if split:
        fns["ours_fwd"] = (forward_fn(custom_ops.roi_align), args[:3])
        fns["base_fwd"] = (forward_fn(), args[:3])
    for fn, a in fns.values():  # trace + warm up (and XLA-compile ours)
        timed(fn, a)
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, (fn, a) in fns.items():
            times[name].append(timed(fn, a))
    return {name: float(np.median(t)) for name, t in times.items()}


_MEMORY_CHILD = """
import os, resource, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import roi
from custom_ops.roi_align import _roi_align_reference
args = roi.make_inputs({k})
fn = roi.ours_fn({op})
out, grad = fn(*args); grad.numpy()
# VmHWM: this process image's peak RSS. (ru_maxrss is not: Linux carries it over from the parent
# across fork and exec, so a large parent would show as every child's peak.)
try:
    with open("/proc/self/status") as f:
        print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024.0)
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def peak_memory_mb(op_name, k):
    """Peak RSS (MB) of a fresh process that runs one fwd+bwd step (VmHWM, Linux)."""
    op = "roi.custom_ops.roi_align" if op_name == "custom" else "_roi_align_reference"
    here = os.path.dirname(os.path.abspath(__file__))
    code = _MEMORY_CHILD.format(root=os.path.dirname(here), bench=here, k=k, op=op)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return float(res.stdout.strip().splitlines()[-1])


def main():
    quick = "--quick" in sys.argv
    repeats = 5 if quick else 15
    print(f"RoIAlign fwd+bwd, features [{N}, {H}, {W}, {C}], {OUT}x{OUT}, sampling_ratio={RATIO}, "
          f"spatial_scale=1/16, tf.function on CPU ({os.cpu_count()} cores, shared machine)")
    # Exactness: our op vs the baseline is not expected to agree (the baseline is off by half a
    # pixel and uses crop_and_resize's corner-aligned sampling); ours matches the definition.
    t = compare(512, repeats, split=True)
    bwd_ours, bwd_base = t["ours"] - t["ours_fwd"], t["base"] - t["base_fwd"]
    print(f"K=512 fwd+bwd: ours {t['ours'] * 1e3:.1f} ms, crop_and_resize+avgpool "
          f"{t['base'] * 1e3:.1f} ms, ratio ours/baseline = {t['ours'] / t['base']:.2f}")
    print(f"  forward only: ours {t['ours_fwd'] * 1e3:.1f} ms, baseline {t['base_fwd'] * 1e3:.1f} "
          f"ms, ratio {t['ours_fwd'] / t['base_fwd']:.2f}")
    print(f"  backward (fwd+bwd - fwd): ours {bwd_ours * 1e3:.1f} ms, baseline "
          f"{bwd_base * 1e3:.1f} ms, ratio {bwd_ours / max(bwd_base, 1e-9):.2f}")
    print("K scaling (median ms, fwd+bwd ours / baseline / ratio / ours per RoI in us):")
    ks = (64, 512, 2048) if quick else (64, 128, 256, 512, 1024, 2048, 4096)
    for k in ks:
        t = compare(k, max(3, repeats // 3))
        o, b = t["ours"], t["base"]
        print(f"  K={k:5d}: {o * 1e3:8.1f} / {b * 1e3:8.1f} / {o / b:5.2f} / {o / k * 1e6:7.1f}")
    print("Peak memory: max RSS of a fresh process running one fwd+bwd step (MB, same inputs; "
          "one process per K and op):")
    for k in (512,) if quick else (512, 2048, 4096):
        row = {}
        for name in ("custom", "reference"):
            try:
                row[name] = f"{peak_memory_mb(name, k):7.1f} MB"
            except RuntimeError as err:  # e.g. out of memory: report it, keep going
                row[name] = f"failed ({str(err).strip().splitlines()[-1][:80]})"
        print(f"  K={k:5d}: custom gradient {row['custom']}, autodiff reference "
              f"{row['reference']}")
    taps = 4 * RATIO * RATIO
    print(f"The custom gradient's backward (float32) reads the box corners [K, 4] and the box "
          f"indices; the float64 scatter keeps an int32 index + weight of {taps} taps per bin "
          f"({_BYTES_PER_TAP * taps * 512 * OUT * OUT / 2**20:.1f} MB at K=512); the autodiff "
          f"reference's gradient materialises the weighted [{taps}, K*49, C] updates "
          f"({taps * 512 * 49 * C * 4 / 2**20:.0f} MB at K=512)")


_BYTES_PER_TAP = 4 + 4  # int32 index + float32 weight per tap

if __name__ == "__main__":
    main()
