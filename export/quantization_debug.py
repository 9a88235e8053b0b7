"""Where full-integer quantization loses accuracy: the int8 error of every quantized tensor.

`layer_errors` runs TensorFlow's quantization debugger (`tf.lite.experimental.
QuantizationDebugger`, https://ai.google.dev/edge/litert/models/quantization_debugger): the
int8 model is run on the given images with each quantized op's output compared to the float
op fed the same (de-quantized) input, so every error is the op's own, not one accumulated from
upstream. The figure to sort by is `rmse_over_scale`, the root mean squared error in units of
the tensor's quantization step: about 0.29 (`1 / sqrt(12)`, uniform rounding) for a tensor
that quantizes well, far above it for one whose range is dominated by a few large values.
The tensor names go to `export.convert_to_tflite(..., keep_float=[...])` to keep those ops in
float.
"""

import csv
import io
import warnings

import numpy as np
import tensorflow as tf

from export._common import input_specs
from export.tflite import _converter, _representative

__all__ = ["layer_errors"]


def layer_errors(model, representative_data, debug_data=None, calibration_steps=None,
                 batch_size=1, input_shapes=None):
    """Per-tensor int8 errors of `model`, the worst first.

    Args:
        model: a built Keras model (one the int8 path of `export.convert_to_tflite` takes).
        representative_data: calibration batches, as for `convert_to_tflite`.
        debug_data: batches the errors are measured on (default: `representative_data`).
        calibration_steps: use at most this many calibration (and debug) examples.
        batch_size, input_shapes: as for `convert_to_tflite`.

    Returns:
        A list of dicts, sorted by `rmse_over_scale` descending: `op` (TFLite op name),
        `tensor` (its output tensor's name, what `keep_float` takes), `rmse_over_scale`,
        `max_abs_error`, `mean_error` (the bias) and `scale` (the quantization step).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> data = [np.random.default_rng(i).random((1, 4), "float32") for i in range(8)]
        >>> rows = layer_errors(model, data)
        >>> rows[0]["op"], rows[0]["rmse_over_scale"] < 1
        ('FULLY_CONNECTED', True)
    """
    specs = input_specs(model, batch_size=batch_size, input_shapes=input_shapes)
    calibration = _representative(model, representative_data, specs, calibration_steps)
    debug = calibration if debug_data is None else _representative(
        model, debug_data, specs, calibration_steps)
    with _converter(model, specs) as conv:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = calibration
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                          tf.lite.OpsSet.TFLITE_BUILTINS]
        with warnings.catch_warnings():  # the debugger runs the deprecated tf.lite.Interpreter
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            debugger = tf.lite.experimental.QuantizationDebugger(converter=conv,
                                                                 debug_dataset=debug)
            debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    rows = []
    for row in csv.DictReader(dump):
        scale = float(row["scale"])
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        rows.append({"op": row["op_name"], "tensor": row["tensor_name"],
                     "rmse_over_scale": rmse / scale if scale else float("inf"),
                     "max_abs_error": float(row["max_abs_error"]),
                     "mean_error": float(row["mean_error"]), "scale": scale})
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])
