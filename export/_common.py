"""Helpers shared by the exporters: input signatures, output names and the overwrite rule.

Private attribute touched (Keras has no public accessor that covers Sequential models):

* `keras.KerasTensor._keras_history`: the layer that produced a model output, whose name
  `output_names` gives the output (functional models also have `model.output_names`, Sequential
  ones do not). When it is missing the output is named `output_<i>`.

`PRIVATE_ATTRIBUTES` lists it; `tests/test_compat.py` checks it exists in the installed Keras.
"""

import os
import shutil

import tensorflow as tf

PRIVATE_ATTRIBUTES = (
    ("keras.KerasTensor", "_keras_history",
     "output_names names a model's outputs after the layers that produce them"),
)


def input_specs(model, batch_size=None, input_shapes=None):
    """`tf.TensorSpec`s for a Keras model's inputs, named after the Keras inputs.

    Args:
        model: a built Keras model with `model.inputs`.
        batch_size: `None` for a dynamic batch, or an int to fix it (TFLite prefers fixed).
        input_shapes: optional full shapes (leading dimension included), one per input, that
            override `batch_size`; for models whose inputs have different leading sizes (for
            example features `[N, H, W, C]` and boxes `[K, 4]`).

    Returns:
        A list of `tf.TensorSpec`, one per model input, in `model.inputs` order (for a model
        with a `serving_signature` hook, its float32 inputs; see `serving_function`).
    """
    if hasattr(model, "serving_signature"):
        specs = model.serving_signature("float32", batch_size)[1]
        if input_shapes is not None:
            specs = [tf.TensorSpec(s, spec.dtype, spec.name) for s, spec in zip(input_shapes, specs)]
        return specs
    if not getattr(model, "inputs", None):
        raise ValueError(
            "`model` must be a built Keras model with defined inputs (a functional model, or a "
            f"subclassed model called once). Received: model={model!r}"
        )
    specs = []
    for i, inp in enumerate(model.inputs):
        name = getattr(inp, "name", None) or f"input_{i}"
        name = name.split(":")[0].replace("/", "_")
        shape = (batch_size,) + tuple(inp.shape[1:])
        if input_shapes is not None:
            shape = tuple(input_shapes[i])
        specs.append(tf.TensorSpec(shape=shape, dtype=inp.dtype, name=name))
    return specs


def input_names(model):
    """The signature input names kcv's exporters give a model's inputs, in `model.inputs` order."""
    return [spec.name for spec in input_specs(model)]


def serving_function(model, dtype):
    """The model's own serving function for `dtype` (`"uint8"` or `"float32"`) inputs, or None.

    A model that serves something other than its raw call (kcv's detectors: uint8 pixels in,
    four named detections out) says so with a `serving_signature(dtype, batch_size)` method
    returning `(fn, input_specs)`, and names its outputs in `serving_output_names`.
    """
    if not hasattr(model, "serving_signature"):
        return None
    return model.serving_signature(dtype, None)[0]


def output_names(model):
    """Names for a model's outputs: `model.serving_output_names` when the model has them, the
    dict keys for a dict-output model (sorted, the order in which Keras flattens a dict),
    otherwise the Keras output layer names, made unique."""
    if getattr(model, "serving_output_names", None):
        return list(model.serving_output_names)
    if isinstance(getattr(model, "output", None), dict):
        return sorted(model.output)
    names = []
    for i, out in enumerate(model.outputs):
        hist = getattr(out, "_keras_history", None)
        name = hist[0].name if hist is not None else f"output_{i}"
        if name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


def prepare_path(path, overwrite):
    """Refuses to write over an existing export unless `overwrite=True`."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(
                f"`path` already exists: {path!r}. Pass overwrite=True to replace it."
            )
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path


def named_outputs(model, outputs):
    """The outputs of `model(...)` as a dict keyed by `output_names(model)`."""
    if isinstance(outputs, dict):
        return {name: outputs[name] for name in output_names(model)}
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return dict(zip(output_names(model), outputs))
