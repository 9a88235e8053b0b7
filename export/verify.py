"""Check an exported `.tflite` against the Keras model: parity, ops, size and latency."""

import numpy as np

from export._common import input_names, named_outputs, output_names
from export._litert import tflite_ops
from export.evaluate import latency_ms, tflite_size
from export.tflite import run_tflite

__all__ = ["verify"]

_BUILTIN_EXCLUDE = ("Flex", "CUSTOM")


def verify(model, tflite_path, inputs, num_runs=20, metric_fn=None, num_threads=1):
    """Compares a `.tflite` file with the Keras model it came from.

    Args:
        model: the Keras model that was converted.
        tflite_path: the `.tflite` file (or its bytes).
        inputs: an input batch (array or list of arrays) to run both on.
        num_runs: how many timed single-batch runs to take the median latency over.
        metric_fn: optional `fn(keras_outputs, tflite_outputs) -> float` reported as `metric`
            (e.g. the Dice between the two models' predictions).
        num_threads: LiteRT interpreter threads for the latency.

    Returns:
        A dict with `max_abs_diff` (over all outputs), `ops` (sorted op names),
        `builtins_only` (no Flex/custom op), `file_size_bytes`, `median_latency_ms` (one fixed
        batch in the LiteRT interpreter), and `metric` when `metric_fn` was given.
    """
    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    arrays = [np.asarray(a) for a in arrays]
    keras_out = named_outputs(model, model(arrays if len(arrays) > 1 else arrays[0],
                                           training=False))
    keras_out = [np.asarray(o, dtype=np.float32) for o in keras_out.values()]
    lite_out = run_tflite(tflite_path, arrays, output_names=output_names(model),
                          input_names=input_names(model))
    diff = max(float(np.max(np.abs(k - t))) if k.size else 0.0 for k, t in zip(keras_out, lite_out))
    ops = tflite_ops(tflite_path)

    size = tflite_size(tflite_path)
    report = {
        "max_abs_diff": diff,
        "ops": ops,
        "builtins_only": not any(op.startswith(_BUILTIN_EXCLUDE) for op in ops),
        "file_size_bytes": int(size),
        "median_latency_ms": latency_ms(tflite_path, num_threads=num_threads, num_runs=num_runs),
    }
    if metric_fn is not None:
        report["metric"] = float(metric_fn(keras_out, lite_out))
    return report
