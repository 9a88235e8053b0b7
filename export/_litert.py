"""The LiteRT interpreter, as the exporters use it (one module; tflite.py and verify.py import it).

Private attribute touched (LiteRT has no public op listing):

* `ai_edge_litert.interpreter.Interpreter._get_ops_details()`: the ops of a loaded model, read by
  `tflite_ops` to tell builtin kernels from Flex/custom ones (the export's builtins-only check).

`PRIVATE_ATTRIBUTES` lists it as `(owner, attribute, why)`; `tests/test_compat.py` checks that
the installed `ai_edge_litert` still has it and names it when an upgrade removes it.
"""

import os

PRIVATE_ATTRIBUTES = (
    ("ai_edge_litert.interpreter.Interpreter", "_get_ops_details",
     "tflite_ops lists a model's ops (builtins-only check); no public op listing"),
)


def interpreter(model):
    """A LiteRT `Interpreter` for a `.tflite` path or its bytes (tensors not allocated)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model))
    return Interpreter(model_path=os.fspath(model))


def tflite_ops(model):
    """The sorted set of op names in a `.tflite` file or bytes (e.g. `CONV_2D`, `FlexErf`).

    Args:
        model: path to a `.tflite` file, or its bytes.

    Returns:
        A sorted list of op names.

    Raises:
        RuntimeError: the installed `ai_edge_litert` no longer has `_get_ops_details`.

    Example:
        >>> import keras, export
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> export.tflite_ops(export.convert_to_tflite(model))
        ['FULLY_CONNECTED']
    """
    interp = interpreter(model)
    details = getattr(interp, "_get_ops_details", None)
    if details is None:
        raise RuntimeError(
            "This ai_edge_litert has no `Interpreter._get_ops_details`, which export.tflite_ops "
            "relies on (see export/_litert.py). Install an ai-edge-litert version kcv supports."
        )
    return sorted({detail["op_name"] for detail in details()})
