"""Inference speed: kcv.models.MobileNetV2 vs keras.applications.MobileNetV2, same run.

Both models are built with the same weights (ours gets keras.applications' weights), then timed
(1) in Keras, a compiled `tf.function` forward pass (`training=False`), batch 8 at 224x224, and
(2) as float32 TFLite models (builtin ops) in the LiteRT interpreter, batch 1 at 224x224.
Calls are interleaved (ours, theirs, ours, ...) and the median of the repeats is reported, with
the ratio ours / keras.applications (goal: <= 1.02). Outputs are checked to agree first. An A/A
row times a second keras.applications model against the first: its distance from 1.0 is the
noise of the machine.

Run: .venv/bin/python benchmarks/backbones.py [--quick]
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import export  # noqa: E402
from kcv.models import MobileNetV2  # noqa: E402

SIZE = 224


def build():
    theirs = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None)
    ours = MobileNetV2((SIZE, SIZE, 3))
    ours.set_weights(theirs.get_weights())
    # A second keras.applications model: timing it against the first shows the noise floor.
    control = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None)
    control.set_weights(theirs.get_weights())
    return ours, theirs, control


def keras_runner(model, x):
    fn = tf.function(lambda t: model(t, training=False))
    x = tf.constant(x)

    def run():
        return fn(x).numpy()

    return run


def tflite_runner(model, x):
    interp = Interpreter(model_content=export.convert_to_tflite(model, batch_size=1), num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]

    def run():
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    return run


def interleaved(ours, theirs, repeats, warmup=3):
    for _ in range(warmup):
        ours()
        theirs()
    times = {"ours": [], "theirs": []}
    pairs = (("ours", ours), ("theirs", theirs))
    for i in range(repeats):
        for key, fn in pairs if i % 2 == 0 else pairs[::-1]:  # alternate who goes first
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def main(quick=False):
    repeats = 5 if quick else 30
    ours, theirs, control = build()
    rng = np.random.default_rng(0)
    rows = []
    for label, runner, batch in (("Keras tf.function, batch 8", keras_runner, 8),
                                 ("LiteRT float32, batch 1", tflite_runner, 1)):
        x = rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)
        run_ours, run_theirs = runner(ours, x), runner(theirs, x)
        diff = float(np.max(np.abs(run_ours() - run_theirs())))
        assert diff <= 1e-5, f"{label}: outputs differ by {diff}"
        t_ours, t_theirs = interleaved(run_ours, run_theirs, repeats)
        rows.append((label, t_ours * 1e3, t_theirs * 1e3, t_ours / t_theirs))
        t_ctrl, t_theirs = interleaved(runner(control, x), run_theirs, repeats)
        rows.append((label + " (A/A control)", t_ctrl * 1e3, t_theirs * 1e3, t_ctrl / t_theirs))
    print(f"MobileNetV2 1.0 at {SIZE}x{SIZE}, median of {repeats} interleaved repeats")
    print(f"{'setting':45s} {'kcv ms':>9s} {'keras.apps ms':>14s} {'ratio':>7s}")
    for label, a, b, r in rows:
        print(f"{label:45s} {a:9.2f} {b:14.2f} {r:7.3f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
