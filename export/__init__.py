"""export: SavedModel for TF Serving, .tflite for phones, and parity/op/latency verification.

Modules: `saved_model` (`to_saved_model`), `serving` (uint8/float/bytes image signatures with
named outputs per family), `rest` (TF Serving's REST predict mapping and a local server),
`tflite` (conversion and the LiteRT runner), `verify` and `evaluate` (parity, accuracy, latency),
`quantization_debug` (the int8 error of every tensor, to choose what `keep_float` keeps).

Example:
    >>> import keras, numpy as np
    >>> import export
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> export.to_saved_model(model, "out/saved_model")
    'out/saved_model'
    >>> export.to_tflite(model, "out/model.tflite")
    'out/model.tflite'
    >>> report = export.verify(model, "out/model.tflite", inputs=np.ones((1, 4), "float32"))
    >>> report["builtins_only"], report["max_abs_diff"] < 1e-5
    (True, True)
"""

from export import evaluate, rest, serving
from export._common import input_names, output_names
from export._litert import tflite_ops
from export.saved_model import to_saved_model
from export.tflite import FlexOpsError, convert_to_tflite, run_tflite, to_tflite
from export.verify import verify

__all__ = [
    "FlexOpsError",
    "convert_to_tflite",
    "evaluate",
    "input_names",
    "output_names",
    "rest",
    "run_tflite",
    "serving",
    "tflite_ops",
    "to_saved_model",
    "to_tflite",
    "verify",
]
