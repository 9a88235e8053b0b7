"""RoIAlign speed and memory: custom_ops.roi_align vs crop_and_resize + 2x2 average pooling.

Forward + backward (gradient with respect to the features) for 512 RoIs on [2, 50, 68, 256]
features, 7x7 output, sampling_ratio=2, spatial_scale=1/16, both in `tf.function`, measured in
the same run, interleaved, median of repeats. Then time against K = 64 ... 4096, and the peak
memory (max RSS of a fresh process) of the custom gradient vs the autodiff reference.

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


def timed(fn, args):
    start = time.perf_counter()
    out, grad = fn(*args)
    _ = grad.numpy()
    return time.perf_counter() - start


def compare(k, repeats):
    args = make_inputs(k)
    ours, base = ours_fn(), baseline_fn()
    for fn in (ours, base):  # trace + warm up
        timed(fn, args)
    t_ours, t_base = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, args))
        t_base.append(timed(base, args))
    return float(np.median(t_ours)), float(np.median(t_base))


_MEMORY_CHILD = """
import os, resource, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import roi
from custom_ops.roi_align import _roi_align_reference
args = roi.make_inputs({k})
fn = roi.ours_fn({op})
out, grad = fn(*args); grad.numpy()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def peak_memory_mb(op_name, k):
    """Peak RSS (MB) of a fresh process that runs one fwd+bwd step (ru_maxrss, Linux KiB)."""
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
    repeats = 3 if quick else 9
    print(f"RoIAlign fwd+bwd, features [{N}, {H}, {W}, {C}], {OUT}x{OUT}, sampling_ratio={RATIO}, "
          f"spatial_scale=1/16, tf.function on CPU ({os.cpu_count()} cores, shared machine)")
    # Exactness: our op vs the baseline is not expected to agree (the baseline is off by half a
    # pixel and uses crop_and_resize's corner-aligned sampling); ours matches the definition.
    t_ours, t_base = compare(512, repeats)
    print(f"K=512: ours {t_ours * 1e3:.1f} ms, crop_and_resize+avgpool {t_base * 1e3:.1f} ms, "
          f"ratio ours/baseline = {t_ours / t_base:.2f}")
    print("K scaling (median ms, ours / baseline / ratio / ours per RoI in us):")
    ks = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024, 2048, 4096)
    for k in ks:
        o, b = compare(k, max(3, repeats // 3))
        print(f"  K={k:5d}: {o * 1e3:8.1f} / {b * 1e3:8.1f} / {o / b:5.2f} / {o / k * 1e6:7.1f}")
    print("Peak memory: max RSS of a fresh process running one fwd+bwd step (MB, same inputs):")
    for k in (512, 2048):
        custom = peak_memory_mb("custom", k)
        ref = peak_memory_mb("reference", k)
        print(f"  K={k:5d}: custom gradient {custom:7.1f} MB, autodiff reference {ref:7.1f} MB, "
              f"difference {ref - custom:.0f} MB")
    kept = 4 * _BYTES_PER_TAP * 512 * (OUT * RATIO) ** 2 / 2**20
    print(f"Tensors the custom gradient keeps for backward at K=512: int32 indices + float32 "
          f"weights of 4 corners = {kept:.1f} MB (the autodiff reference keeps the gathered "
          f"[4, K, 14, 14, C] samples: {4 * 512 * 196 * C * 4 / 2**20:.0f} MB)")


_BYTES_PER_TAP = 4 + 4  # int32 index + float32 weight per corner per sample

if __name__ == "__main__":
    main()
