"""Export a Keras model as a SavedModel that TF Serving (or any TF process) can load."""

import keras
import tensorflow as tf

from export._common import input_specs, named_outputs, prepare_path


def to_saved_model(model, path, overwrite=False, batch_size=None):
    """Writes `model` as a SavedModel with a `serving_default` signature.

    The signature takes the model's inputs by their Keras input names (e.g. `image`) and returns a
    dict keyed by the output layer names (or by the keys of a dict-output model). The SavedModel holds the traced graph and the weights
    only, so a process that cannot import kcv (TF Serving, `tf.saved_model.load`) runs it.
    A model with a `serving_signature(dtype, batch_size)` method (kcv's detectors) is served
    through it with `dtype="uint8"`: uint8 `images` `[B, H, W, 3]` in, `boxes`, `scores`,
    `classes`, `num_detections` out.

    Args:
        model: a built Keras model (functional or called once).
        path: directory to write.
        overwrite: replace an existing `path`; without it an existing path raises.
        batch_size: `None` (default) for a dynamic batch dimension, or a fixed int.

    Returns:
        The path written, as a string.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> to_saved_model(model, "exports/dense/1")  # TF Serving's versioned layout
        'exports/dense/1'
        >>> sorted(tf.saved_model.load("exports/dense/1").signatures)
        ['serving_default']
    """
    path = prepare_path(path, overwrite)
    if hasattr(model, "serving_signature"):  # detectors: uint8 images in, named detections out
        serve, specs = model.serving_signature("uint8", batch_size)
        write_saved_model(model, path, specs, serve)
    else:
        write_saved_model(model, path, input_specs(model, batch_size=batch_size))
    return path


def write_saved_model(model, path, specs, serve=None):
    """Writes the `serving_default` SavedModel of `model` for the given input specs.

    `serve` is the function to export (default: the model's call, outputs named by
    `output_names`).
    """
    if serve is None:
        def serve(*args):
            return named_outputs(model, model(list(args) if len(args) > 1 else args[0],
                                              training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    with tf.device("/cpu:0"):
        archive.write_out(path, verbose=False)
