"""UNet++ pruned levels L1..L4 against the full UNet++ (L4) and a U-Net of the same width.

Measures, in the same run, parameters and single-image inference latency of every level in
Keras (a compiled tf.function) and as float32 TFLite in LiteRT, interleaving the models within
each repeat and taking medians, and prints each one's latency as a ratio of the full model's.

Run: python benchmarks/unet_plus_plus_pruning.py [--size 96 --filters 32 --repeats 7]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import export  # noqa: E402
import kcv  # noqa: E402
from export._litert import interpreter  # noqa: E402


def _keras_runner(model):
    fn = tf.function(lambda x: model(x, training=False))
    return lambda x: fn(x).numpy()


def _lite_runner(model):
    runner = interpreter(export.convert_to_tflite(model)).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    return lambda x: runner(**{name: x})


def _time(fn, x, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args(argv)
    shape = (args.size, args.size, 1)
    full = kcv.models.UNetPlusPlus(shape, 1, filters=args.filters, depth=4, norm=None)
    models = {f"UNet++ L{k}": kcv.models.prune(full, k) for k in (1, 2, 3, 4)}
    models["U-Net"] = kcv.models.UNet(shape, 1, filters=args.filters, depth=4, norm=None)
    x = np.random.default_rng(0).random((1, *shape)).astype("float32")
    runners = {name: (_keras_runner(m), _lite_runner(m)) for name, m in models.items()}
    times = {name: ([], []) for name in models}
    for fn_keras, fn_lite in runners.values():  # warm-up (tracing, delegate set-up)
        fn_keras(x)
        fn_lite(x)
    for _ in range(args.repeats):  # interleaved: every model once per repeat
        for name, (fn_keras, fn_lite) in runners.items():
            times[name][0].append(_time(fn_keras, x, args.calls))
            times[name][1].append(_time(fn_lite, x, args.calls))
    base_keras, base_lite = (np.median(t) for t in times["UNet++ L4"])
    print(f"UNet++ pruning, input {shape}, filters {args.filters}, batch 1, median of "
          f"{args.repeats} x {args.calls} calls (shared 2-core CPU: noisy)")
    print(f"{'model':<11} {'params':>11} {'Keras ms':>9} {'ratio':>6} {'LiteRT ms':>10} "
          f"{'ratio':>6}")
    for name, model in models.items():
        k, lite = (float(np.median(t)) for t in times[name])
        print(f"{name:<11} {model.count_params():>11,} {k:>9.2f} {k / base_keras:>6.2f} "
              f"{lite:>10.2f} {lite / base_lite:>6.2f}")


if __name__ == "__main__":
    main()
