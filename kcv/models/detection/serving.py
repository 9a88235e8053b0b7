"""What a detector serves when exported: one `images` input and the four named detection outputs.

`export.to_saved_model` and `export.to_tflite` look for a model's `serving_signature(dtype,
batch_size)` method (FasterRCNN has one, calling `serving_signature` below) and serve the
function it returns instead of the model's raw call: the SavedModel takes uint8 pixels (what a
client decodes from a JPEG), the TFLite model float32 in [0, 1] (what a phone's camera pipeline
hands over), and both return `boxes`, `scores`, `classes`, `num_detections` by name. kcv itself
never imports `export/` (DESIGN.md); the exporters only duck-type the method.
"""

import tensorflow as tf

DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
# The TensorFlow name scopes of a detector's box arithmetic: anchors, proposal decoding and NMS,
# RoIAlign/RoIPool, Cascade's box refinement, per-class decoding and NMS. Full-integer TFLite
# keeps them in float32 (`export.convert_to_tflite(..., float_scopes=...)`): int8 box
# coordinates would move boxes by whole pixels and tie the scores NMS sorts.
FLOAT_SCOPES = ("generate_anchors", "generate_proposals", "roi_align", "roi_pool",
                "refine_boxes", "postprocess_detections", "select_detections")
# TFLite ops that the int8 quantizer gives a scale even inside the scopes above (their input's,
# or the fixed 1/256 of LOGISTIC and SOFTMAX): kept in float32 by type (`keep_float=...`). None of
# them computes in a detector's convolutional or fully connected parts.
FLOAT_OPS = ("TOPK_V2", "GATHER", "UNPACK", "PACK", "STRIDED_SLICE", "SELECT_V2",
             "CONCATENATION", "RESHAPE", "LOGISTIC", "SOFTMAX")
_DTYPES = ("uint8", "float32")


def serving_signature(model, dtype="uint8", batch_size=None):
    """The serving function of a detector and its input signature.

    Args:
        model: a detector whose call maps float images `[B, H, W, 3]` in [0, 1] to the
            detections dict (`FasterRCNN`).
        dtype: `"uint8"`: pixels 0..255, divided by 255 inside (the SavedModel for TF
            Serving); `"float32"`: already in [0, 1] (the TFLite model).
        batch_size: `None` for a dynamic batch, or a fixed int (TFLite uses 1).

    Returns:
        `(fn, specs)`: `fn(images)` returns the dict `{"boxes" float32 [B, D, 4], "scores"
        float32 [B, D], "classes" int32 [B, D], "num_detections" int32 [B]}` (boxes in input
        pixels), and `specs` is `[tf.TensorSpec([batch_size, H, W, 3], dtype, name="images")]`
        with `(H, W)` the model's `input_shape` (`None` when the model takes any size).

    Example:
        >>> from kcv.models.detection import FasterRCNN
        >>> model = FasterRCNN(2, backbone="resnet18", input_shape=(64, 64, 3), fpn_filters=8,
        ...                    representation_size=16, rpn_post_nms_top_n=(32, 16))
        >>> fn, specs = serving_signature(model, "uint8")
        >>> specs[0].name, specs[0].shape.as_list(), specs[0].dtype.name
        ('images', [None, 64, 64, 3], 'uint8')
        >>> sorted(fn(tf.zeros([1, 64, 64, 3], tf.uint8)))
        ['boxes', 'classes', 'num_detections', 'scores']
    """
    if dtype not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {_DTYPES}. Received: dtype={dtype!r}")
    height, width, channels = model.image_shape_arg
    spec = tf.TensorSpec([batch_size, height, width, channels], dtype, name="images")

    def serve(images):
        images = tf.cast(images, tf.float32)
        if dtype == "uint8":
            images = images / 255.0
        out = model(images, training=False)
        return {
            "boxes": tf.cast(out["boxes"], tf.float32),
            "scores": tf.cast(out["scores"], tf.float32),
            "classes": tf.cast(out["classes"], tf.int32),
            "num_detections": tf.cast(out["num_detections"], tf.int32),
        }

    return serve, [spec]
