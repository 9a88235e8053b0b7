"""Shared target handling of the losses: shapes, sparse or one-hot labels, logits or not."""

import tensorflow as tf


def check_same_shape(y_true, y_pred):
    """Refuses `y_true`/`y_pred` of static shapes that cannot match (a ValueError naming both,
    instead of TensorFlow's "Incompatible shapes" deep inside the loss)."""
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape. "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )


def _check_spatial_shape(y_true, y_pred, what):
    """`y_true`'s leading (batch and spatial) dimensions equal `y_pred`'s: statically when known,
    with a `tf.debugging` assertion otherwise. Returns `y_true`, after the assertion."""
    expected = y_pred.shape[:-1]
    received = y_true.shape[: expected.rank]
    if not received.is_compatible_with(expected):
        raise ValueError(
            f"`y_true` ({what}) must match the batch and spatial dimensions of `y_pred`. "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    if received.is_fully_defined() and expected.is_fully_defined():
        return y_true
    check = tf.debugging.assert_equal(
        tf.shape(y_true)[: expected.rank], tf.shape(y_pred)[:-1],
        message=f"`y_true` ({what}) must match the batch and spatial dimensions of `y_pred`",
    )
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


def _check_label_range(bad, message, values):
    """Raises when any of `bad` is set: a ValueError eagerly, a `tf.debugging` assertion (an
    InvalidArgumentError when the graph runs) inside `tf.function`. Returns `values`, after
    the assertion."""
    if tf.executing_eagerly():
        if bool(tf.reduce_any(bad)):
            found = tf.unique(tf.reshape(tf.boolean_mask(values, bad), [-1]))[0].numpy()
            raise ValueError(f"{message}. Received: y_true values {sorted(found.tolist())[:10]}")
        return values
    check = tf.debugging.assert_equal(tf.reduce_any(bad), False, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(values)


def _counted(values, ignore_index, outside, message):
    """`(values, valid)`: `valid` is False where `values == ignore_index`; any other value for
    which `outside(values)` holds is an error (`_check_label_range`) with `message`."""
    if ignore_index is None:
        valid = tf.ones_like(values, dtype=tf.bool)
    else:
        valid = tf.not_equal(values, tf.cast(ignore_index, values.dtype))
        message += f" other than ignore_index={ignore_index}"
    return _check_label_range(valid & outside(values), message, values), valid


def dense_targets(y_true, y_pred, from_logits, ignore_index=None):
    """Brings targets and predictions of a segmentation loss to one form.

    Args:
        y_true: sparse int labels `[B, H, W]` (or `[B, H, W, 1]` when `y_pred` has more than one
            channel) in `[0, C)`, one-hot `[B, H, W, C]`, or for binary segmentation (`C == 1`)
            values in [0, 1] `[B, H, W, 1]` (or `[B, H, W]`). A label equal to `ignore_index`
            is left out; any other label outside that range is an error.
        y_pred: `[B, H, W, C]` probabilities, or logits with `from_logits=True` (sigmoid when
            `C == 1`, softmax otherwise).
        from_logits: whether `y_pred` holds logits.
        ignore_index: a label value whose pixels count nowhere (sparse or binary targets only).

    Returns:
        `(probs, onehot, valid)`, float32: probabilities and one-hot targets `[B, H, W, C]`
        with ignored pixels zeroed, and `valid` `[B, H, W, 1]` (1 where the pixel counts).

    Raises:
        ValueError: for shapes that do not fit together, and (eagerly) for labels outside the
            classes; in graph mode the labels are checked by a `tf.debugging` assertion.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    logits = tf.cast(y_pred, tf.float32)
    rank = y_pred.shape.rank
    num_classes = y_pred.shape[-1] if rank else None
    if rank is None or rank < 2 or num_classes is None:
        raise ValueError(
            "`y_pred` must have a known rank >= 2 and a known channel dimension. "
            f"Received: y_pred.shape={y_pred.shape}"
        )
    y_true = tf.convert_to_tensor(y_true)
    if num_classes == 1:
        probs = tf.sigmoid(logits) if from_logits else logits
        if y_true.shape.rank == rank - 1:
            y_true = y_true[..., None]
        y_true = _check_spatial_shape(y_true, y_pred, "binary targets")
        if y_true.shape.rank != rank or y_true.shape[-1] not in (1, None):
            raise ValueError(
                f"`y_true` of binary segmentation must have shape {y_pred.shape} or "
                f"{y_pred.shape[:-1]}. Received: y_true.shape={y_true.shape}, "
                f"y_pred.shape={y_pred.shape}"
            )
        target, valid_bool = _counted(
            tf.cast(y_true, tf.float32), ignore_index, lambda t: (t < 0) | (t > 1),
            "`y_true` of binary segmentation (one channel in y_pred) holds values outside [0, 1]")
        valid = tf.cast(valid_bool, tf.float32)
        return probs * valid, target * valid, valid
    probs = tf.nn.softmax(logits, axis=-1) if from_logits else logits
    if y_true.shape.rank == rank and y_true.shape[-1] == num_classes:
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` needs sparse integer targets; one-hot targets cannot mark ignored "
                f"pixels. Received: ignore_index={ignore_index!r} with y_true.shape={y_true.shape}"
            )
        y_true = _check_spatial_shape(y_true, y_pred, "one-hot")
        onehot = tf.cast(y_true, tf.float32)
        valid = tf.ones_like(onehot[..., :1])
        return probs, onehot, valid
    if y_true.shape.rank == rank and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape.rank != rank - 1:
        raise ValueError(
            f"`y_true` must be sparse labels of shape {y_pred.shape[:-1]} or one-hot of shape "
            f"{y_pred.shape}. Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    y_true = _check_spatial_shape(y_true, y_pred, "sparse labels")
    labels, valid_bool = _counted(
        tf.cast(y_true, tf.int32), ignore_index, lambda t: (t < 0) | (t >= num_classes),
        f"`y_true` holds labels outside [0, {num_classes}) (y_pred has {num_classes} classes)")
    onehot = tf.one_hot(tf.where(valid_bool, labels, 0), num_classes, dtype=tf.float32)
    valid = tf.cast(valid_bool, tf.float32)[..., None]
    return probs * valid, onehot * valid, valid


def spatial_axes(tensor):
    """The axes between batch and channels (e.g. (1, 2) for NHWC)."""
    return list(range(1, tensor.shape.rank - 1))


def num_channels(y_pred):
    """The static channel count of `y_pred` (the number of classes; 1 for binary)."""
    shape = y_pred.shape if hasattr(y_pred, "shape") else tf.convert_to_tensor(y_pred).shape
    if len(shape) < 2 or shape[-1] is None:
        raise ValueError("`y_pred` needs a known channel dimension. Received: y_pred.shape="
                         f"{tuple(shape)}")
    return int(shape[-1])


def class_weight_vector(weights, num_classes, name="alpha"):
    """Per-class weights `[C']` (C' = 2 for binary: background, foreground) from a checked
    `check_alpha`/`check_weights` value: a float means `(1 - a, a)` for binary (RetinaNet's
    alpha on the foreground) and the same weight for every class otherwise."""
    if weights is None:
        return None
    classes = 2 if num_classes == 1 else num_classes
    if isinstance(weights, float):
        return [1.0 - weights, weights] if num_classes == 1 else [weights] * classes
    if len(weights) != classes:
        raise ValueError(
            f"`{name}` needs one weight per class ({classes}; binary segmentation has 2: "
            f"background, foreground). Received: {name}={weights!r}"
        )
    return weights
