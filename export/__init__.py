"""export: SavedModel for TF Serving, .tflite for phones, and parity/op/latency verification.

Example:
    >>> import export
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
    >>> images = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    >>> export.to_saved_model(model, "out/saved_model")
    'out/saved_model'
    >>> export.to_tflite(model, "out/model.tflite")
    'out/model.tflite'
    >>> report = export.verify(model, "out/model.tflite", inputs=images)
    >>> report["builtins_only"], report["max_abs_diff"] < 1e-5
    (True, True)
"""

from export._common import input_names, output_names
from export.saved_model import to_saved_model
from export.tflite import FlexOpsError, convert_to_tflite, run_tflite, to_tflite
from export.verify import tflite_ops, verify

__all__ = [
    "FlexOpsError",
    "convert_to_tflite",
    "input_names",
    "output_names",
    "run_tflite",
    "tflite_ops",
    "to_saved_model",
    "to_tflite",
    "verify",
]
