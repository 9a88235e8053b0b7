"""NMS speed: custom_ops.nms / soft_nms against TensorFlow's kernels, in the same run.

Random boxes (centres uniform in a 1000x1000 image, sides uniform in [10, 300]), uniform scores,
IoU threshold 0.5, no output limit (max_output_size = number of boxes). Each function runs
inside a plain `tf.function` ("ours": the default path, whose loop runs as an inner XLA program)
and ours also under an outer `jit_compile=True` with padded output ("ours XLA"); timings are the
median of interleaved repeats (ours, baseline, ours, ...), so that load from other processes
hits both sides alike.

    python benchmarks/nms.py                 # 10k boxes + growth 1k..50k
    python benchmarks/nms.py --sizes 10000 --repeats 9
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import custom_ops  # noqa: E402


def random_boxes(n, seed=0, max_side=300.0):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 1000, (n, 2))
    side = rng.uniform(10, max_side, (n, 2))
    boxes = np.concatenate([centre - side / 2, centre + side / 2], 1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32)


def _time(fn, args, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = fn(*args)
        tf.nest.map_structure(lambda x: x.numpy(), r)
        out.append(time.perf_counter() - t)
    return out


def compare(candidates, args, repeats):
    """Interleaved timing; returns {name: median seconds}."""
    for fn in candidates.values():  # trace / compile
        fn(*args)
    times = {k: [] for k in candidates}
    for _ in range(repeats):
        for k, fn in candidates.items():
            times[k] += _time(fn, args, 1)
    return {k: float(np.median(v)) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 20000, 50000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--soft-sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")

    print("\nhard NMS, IoU > 0.5, max_output_size = N")
    print(f"{'N':>7} {'kept':>6} {'tf.image':>10} {'ours':>10} {'ours XLA':>10} "
          f"{'ratio':>7} {'ratio XLA':>9}")
    for n in args.sizes:
        boxes, scores = random_boxes(n)
        baseline = tf.function(lambda b, s, n=n: tf.image.non_max_suppression(b, s, n, 0.5))
        ours = tf.function(lambda b, s: custom_ops.nms(b, s, 0.5))
        ours_xla = tf.function(
            lambda b, s, n=n: custom_ops.nms(b, s, 0.5, max_output_size=n,
                                             pad_to_max_output_size=True), jit_compile=True)
        expected = baseline(boxes, scores).numpy()
        assert np.array_equal(ours(boxes, scores).numpy(), expected), "results differ"
        idx, num = ours_xla(boxes, scores)
        assert np.array_equal(idx.numpy()[: int(num)], expected), "XLA results differ"
        repeats = args.repeats if n <= 20000 else max(3, args.repeats // 2)
        t = compare({"tf": baseline, "ours": ours, "xla": ours_xla}, (boxes, scores), repeats)
        print(f"{n:>7} {len(expected):>6} {t['tf'] * 1e3:>8.1f}ms {t['ours'] * 1e3:>8.1f}ms "
              f"{t['xla'] * 1e3:>8.1f}ms {t['tf'] / t['ours']:>6.2f}x {t['tf'] / t['xla']:>8.2f}x")

    print("\nGaussian soft-NMS (sigma 0.5 in Bodla's form = TF soft_nms_sigma 0.25), "
          "score_threshold 1e-3, max_output_size = N")
    print(f"{'N':>7} {'tf.image':>10} {'ours':>10} {'ours XLA':>10} {'ratio':>7} {'ratio XLA':>9}")
    for n in args.soft_sizes:
        boxes, scores = random_boxes(n)
        baseline = tf.function(lambda b, s, n=n: tf.image.non_max_suppression_with_scores(
            b, s, n, iou_threshold=1.0, score_threshold=1e-3, soft_nms_sigma=0.25))
        ours = tf.function(lambda b, s: custom_ops.soft_nms(b, s, sigma=0.5))
        ours_xla = tf.function(lambda b, s, n=n: custom_ops.soft_nms(
            b, s, sigma=0.5, max_output_size=n, pad_to_max_output_size=True), jit_compile=True)
        ref_idx, _ = baseline(boxes, scores)
        assert np.array_equal(ours(boxes, scores)[0].numpy(), ref_idx.numpy()), "results differ"
        repeats = max(3, args.repeats // 2)
        t = compare({"tf": baseline, "ours": ours, "xla": ours_xla}, (boxes, scores), repeats)
        print(f"{n:>7} {t['tf'] * 1e3:>8.1f}ms {t['ours'] * 1e3:>8.1f}ms {t['xla'] * 1e3:>8.1f}ms "
              f"{t['tf'] / t['ours']:>6.2f}x {t['tf'] / t['xla']:>8.2f}x")


if __name__ == "__main__":
    main()
