"""Serving signatures for image models: pixels of any size in, named results out.

A deployed image model is sent a photo's pixels (uint8, any size) or its encoded bytes (JPEG,
PNG), and answers with named results: classification `probabilities`, `class`; segmentation
`probabilities`, `mask` at the size of the image sent; detection `boxes` (in the pixels of the
image sent), `scores`, `classes`, `num_detections`. The functions here build those signatures
around a Keras model; `export.to_saved_model(..., serving="uint8")` writes them.

The family is read from the model's outputs (`task="auto"`): a dict holding `boxes`, `scores`,
`classes` and `num_detections` is detection, one `[B, C]` tensor classification, one
`[B, h, w, C]` tensor segmentation.

A model whose `call` does not return those outputs (kcv's detectors) has a
`serving_signature(dtype, batch_size)` method returning `(fn, input_specs)`; its `"float32"`
function is run on the images, already preprocessed and at the model's input size, instead of
`model(images)`. For detection it returns `boxes` (`[B, D, 4]`, `[y1, x1, y2, x2]` in the
pixels of `images`), `scores` `[B, D]`, `classes` `[B, D]` and `num_detections` `[B]`.
"""

import tensorflow as tf

TASKS = ("auto", "classification", "segmentation", "detection")
SERVINGS = ("uint8", "float")
DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")

# ImageNet statistics (torchvision / keras.applications "torch" mode), in pixels of [0, 255].
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PREPROCESSING = ("unit", "symmetric", "imagenet", "none")


def preprocess_pixels(pixels, preprocess="unit"):
    """Normalises float pixels in [0, 255] the way a model was trained.

    Args:
        pixels: float32 Tensor `[B, H, W, 3]`, values in [0, 255].
        preprocess: `"unit"` (x / 255, the range of `kcv.data` pipelines; default),
            `"symmetric"` (x / 127.5 - 1, MobileNet's), `"imagenet"` ((x / 255 - mean) / std
            with ImageNet's mean and std), `"none"`, or a callable mapping such pixels to the
            model's input (it is traced into the SavedModel: TensorFlow ops only).

    Returns:
        The model input, float32 `[B, H, W, 3]`.

    Example:
        >>> preprocess_pixels(tf.fill([1, 1, 1, 3], 255.0), "symmetric").numpy().ravel()
        array([1., 1., 1.], dtype=float32)
    """
    if callable(preprocess):
        return preprocess(pixels)
    if preprocess == "unit":
        return pixels / 255.0
    if preprocess == "symmetric":
        return pixels / 127.5 - 1.0
    if preprocess == "imagenet":
        return (pixels - tf.constant(_IMAGENET_MEAN)) / tf.constant(_IMAGENET_STD)
    if preprocess == "none":
        return pixels
    raise ValueError(f"`preprocess` must be one of {PREPROCESSING} or a callable. "
                     f"Received: preprocess={preprocess!r}")


def check_serving(serving, task, preprocess):
    """Validates the serving arguments before anything is traced."""
    if serving not in SERVINGS:
        raise ValueError(f"`serving` must be one of {SERVINGS} (or None for the model's own "
                         f"inputs and outputs). Received: serving={serving!r}")
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if not callable(preprocess) and preprocess not in PREPROCESSING:
        raise ValueError(f"`preprocess` must be one of {PREPROCESSING} or a callable. "
                         f"Received: preprocess={preprocess!r}")


def model_image_size(model, image_size=None):
    """The `(height, width)` images are resized to before the model, or None (kept as sent)."""
    if image_size is not None:
        size = tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError("`image_size` must be two positive ints (height, width). "
                             f"Received: image_size={image_size!r}")
        return size
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError("serving signatures need a model whose first input is images "
                         f"[B, H, W, 3]. Received: input shape {shape}")
    if shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def _output_layer(model):
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)  # see export/_common.py
    return history[0] if history is not None else None


def _is_probability(model):
    """Whether the model's single output already is softmax/sigmoid probabilities."""
    layer = _output_layer(model)
    if layer is None:
        return True
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", str(activation))
    return name in ("softmax", "sigmoid")


def _raw_outputs(model, images):
    if hasattr(model, "serving_signature"):  # kcv's detectors: float32 images in [0, 1]
        return model.serving_signature("float32", None)[0](images)
    return model(images, training=False)


def infer_task(model, outputs):
    """The family of a model from its outputs (see the module docstring)."""
    if isinstance(outputs, dict):
        if all(key in outputs for key in DETECTION_OUTPUTS):
            return "detection"
        raise ValueError("Cannot tell the task of a model returning a dict with keys "
                         f"{sorted(outputs)}; detection needs {list(DETECTION_OUTPUTS)}. "
                         "Pass task=..., or serving=None to export its own outputs.")
    if isinstance(outputs, (list, tuple)):
        raise ValueError(f"Cannot tell the task of a model with {len(outputs)} outputs (e.g. "
                         "UNet++ with deep supervision: build it with deep_supervision=False). "
                         "Pass serving=None to export its own outputs.")
    rank = len(outputs.shape)
    if rank == 2:
        return "classification"
    if rank == 4:
        return "segmentation"
    raise ValueError(f"Cannot tell the task of a model whose output has shape {outputs.shape}; "
                     "pass task=..., or serving=None to export its own outputs.")


def _probabilities(model, scores):
    scores = tf.cast(scores, tf.float32)
    if _is_probability(model):
        return scores
    return tf.sigmoid(scores) if scores.shape[-1] == 1 else tf.nn.softmax(scores, axis=-1)


def _mask(probabilities):
    if probabilities.shape[-1] == 1:
        return tf.cast(probabilities[..., 0] > 0.5, tf.int32)
    return tf.argmax(probabilities, axis=-1, output_type=tf.int32)


def family_outputs(model, task, images):
    """The named outputs of `model` for model-ready `images`, at the model's size.

    Args:
        model: the Keras model.
        task: `"classification"`, `"segmentation"`, `"detection"` or `"auto"`.
        images: float32 `[B, h, w, 3]`, preprocessed, at the model's input size.

    Returns:
        A dict of named tensors (see the module docstring); boxes in the pixels of `images`.
    """
    outputs = _raw_outputs(model, images)
    if task == "auto":
        task = infer_task(model, outputs)
    if task == "classification":
        probabilities = _probabilities(model, outputs)
        return {"probabilities": probabilities,
                "class": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
    if task == "segmentation":
        probabilities = _probabilities(model, outputs)
        return {"probabilities": probabilities, "mask": _mask(probabilities)}
    return {"boxes": tf.cast(outputs["boxes"], tf.float32),
            "scores": tf.cast(outputs["scores"], tf.float32),
            "classes": tf.cast(outputs["classes"], tf.int32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32)}


def _resize(images, size):
    return images if size is None else tf.image.resize(images, size, method="bilinear")


def serving_functions(model, task="auto", preprocess="unit", image_size=None):
    """The three serving functions of an image model, with their input signatures.

    Args:
        model: a Keras image model (see the module docstring for the families).
        task: `"auto"` (read from the outputs), `"classification"`, `"segmentation"` or
            `"detection"`.
        preprocess: how uint8 pixels become the model's input (`preprocess_pixels`).
        image_size: `(height, width)` to resize to; default: the model's static input size
            (no resize when the model takes any size).

    Returns:
        A dict `{"uint8": (fn, specs), "float": (fn, specs), "bytes": (fn, specs)}`:
        `uint8` takes `image` uint8 `[B, None, None, 3]` (resized and normalised inside;
        segmentation outputs and boxes come back at the size sent); `float` takes `image`
        float32 `[B, None, None, 3]` already normalised as the model expects (resized inside,
        results at the size sent); `bytes` takes `image_bytes` string `[B]` of encoded
        JPEG/PNG/BMP/GIF images, each decoded and resized to the model's size (boxes come back in
        each image's own pixels, segmentation outputs at the model's size with `image_size`
        `[B, 2]` giving each image's height and width). `bytes` is left out when the model's
        size is unknown (images of different sizes cannot form one batch).
    """
    size = model_image_size(model, image_size)

    def answer(model_input, sent):
        outs = family_outputs(model, task, model_input)
        return _map_back(outs, tf.shape(sent)[1:3], tf.shape(model_input)[1:3])

    def serve_uint8(image):
        pixels = _resize(tf.cast(image, tf.float32), size)
        return answer(preprocess_pixels(pixels, preprocess), image)

    def serve_float(image):
        return answer(_resize(image, size), image)

    functions = {
        "uint8": (serve_uint8, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")]),
        "float": (serve_float, [tf.TensorSpec([None, None, None, 3], tf.float32, name="image")]),
    }
    if size is not None:
        def serve_bytes(image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                shape = tf.cast(tf.shape(image)[:2], tf.float32)
                image = tf.image.resize(tf.cast(image, tf.float32)[None], size)[0]
                return image, shape

            pixels, sizes = tf.map_fn(
                decode, image_bytes,
                fn_output_signature=(tf.TensorSpec([size[0], size[1], 3], tf.float32),
                                     tf.TensorSpec([2], tf.float32)))
            outs = family_outputs(model, task, preprocess_pixels(pixels, preprocess))
            if "boxes" in outs:  # each image's own pixels
                scale = sizes / tf.constant(size, tf.float32)
                outs["boxes"] = outs["boxes"] * tf.tile(scale, [1, 2])[:, None, :]
            outs["image_size"] = tf.cast(sizes, tf.int32)
            return outs

        functions["bytes"] = (serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    return functions


def _map_back(outputs, sent, model_size):
    """Brings segmentation outputs and boxes from the model's size back to the size sent."""
    if "mask" in outputs:
        probabilities = tf.image.resize(outputs["probabilities"], sent, method="bilinear")
        return {"probabilities": probabilities, "mask": _mask(probabilities)}
    if "boxes" in outputs:
        scale = tf.cast(sent, tf.float32) / tf.cast(model_size, tf.float32)
        return {**outputs, "boxes": outputs["boxes"] * tf.concat([scale, scale], axis=0)}
    return outputs
