"""Export a Keras model as a SavedModel that TF Serving (or any TF process) can load."""

import os

import keras
import tensorflow as tf

from export._common import input_specs, named_outputs, prepare_path
from export.serving import check_serving, serving_functions


def to_saved_model(model, path, overwrite=False, batch_size=None, serving=None,
                   preprocess="unit", task="auto", image_size=None, version=None):
    """Writes `model` as a SavedModel for TF Serving.

    With `serving=None` (the default) the `serving_default` signature takes the model's inputs
    by their Keras input names (e.g. `image`) and returns a dict keyed by the output layer names
    (or by the keys of a dict-output model).

    With `serving="uint8"` or `"float"` an image model gets the signatures a deployment wants
    (`export.serving.serving_functions`): `serving_uint8` takes `image` uint8
    `[B, None, None, 3]` of any size (resized to the model's size and normalised by
    `preprocess` inside); `serving_float` takes `image` float32 `[B, None, None, 3]` already
    normalised (resized inside); `serving_bytes` takes `image_bytes` string `[B]` of encoded
    images (when the model's input size is fixed). `serving_default` is `serving_uint8` or
    `serving_float`, as `serving` says. They return named outputs, mapped back to the size sent
    where that is meaningful: classification `probabilities`, `class`; segmentation
    `probabilities`, `mask`; detection `boxes`, `scores`, `classes`, `num_detections`.

    The SavedModel holds the traced graph and the weights only, so a process that cannot import
    kcv (TF Serving, `tf.saved_model.load`) runs it.

    A model with a `serving_signature(dtype, batch_size)` method (kcv's detectors) is served
    through it: with `serving=None`, `serving_default` takes uint8 `images` `[B, H, W, 3]` and
    returns `boxes`, `scores`, `classes`, `num_detections`; with `serving="uint8"`/`"float"` its
    float32 function (images in [0, 1]) is the model of the signatures above (pass `image_size`).

    Args:
        model: a built Keras model (functional, or subclassed and called once).
        path: directory to write; TF Serving expects `models/<name>/<version>/`.
        overwrite: replace an existing export; without it an existing one raises.
        batch_size: with `serving=None`, `None` (default) for a dynamic batch, or a fixed int.
        serving: `None`, `"uint8"` or `"float"` (see above).
        preprocess: `"unit"` (x / 255; default), `"symmetric"`, `"imagenet"`, `"none"` or a
            TensorFlow callable on float pixels in [0, 255] (`export.serving.preprocess_pixels`).
        task: `"auto"` (read from the model's outputs), `"classification"`, `"segmentation"`,
            `"detection"`.
        image_size: `(height, width)` the images are resized to; default the model's input size.
        version: an int writes `path/<version>/` (TF Serving's versioned layout) and returns it.

    Returns:
        The path written, as a string.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> to_saved_model(model, "exports/dense", version=1)  # TF Serving's versioned layout
        'exports/dense/1'
        >>> sorted(tf.saved_model.load("exports/dense/1").signatures)
        ['serving_default']
        >>> classifier = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                                keras.layers.Dense(3, activation="softmax")])
        >>> path = to_saved_model(classifier, "exports/classifier", serving="uint8", version=1)
        >>> sorted(tf.saved_model.load(path).signatures)
        ['serving_bytes', 'serving_default', 'serving_float', 'serving_uint8']
    """
    if serving is not None:
        check_serving(serving, task, preprocess)
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"`version` must be a positive int. Received: version={version!r}")
        path = os.path.join(os.fspath(path), str(version))
    path = prepare_path(path, overwrite)
    if serving is None:
        if hasattr(model, "serving_signature"):  # detectors: uint8 images in, named detections
            serve, specs = model.serving_signature("uint8", batch_size)
            write_saved_model(model, path, specs, serve)
        else:
            write_saved_model(model, path, input_specs(model, batch_size=batch_size))
        return path
    functions = serving_functions(model, task=task, preprocess=preprocess,
                                  image_size=image_size)
    endpoints = {f"serving_{kind}": fn_specs for kind, fn_specs in functions.items()}
    endpoints["serving_default"] = functions[serving]
    _write(model, path, endpoints)
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

    _write(model, path, {"serving_default": (serve, specs)})


def _write(model, path, endpoints):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, specs) in endpoints.items():
        archive.add_endpoint(name=name, fn=_copy(fn), input_signature=specs)
    with tf.device("/cpu:0"):
        archive.write_out(path, verbose=False)


def _copy(fn):
    """A new Python function per endpoint (ExportArchive traces each endpoint separately)."""
    def endpoint(*args):
        return fn(*args)

    return endpoint
