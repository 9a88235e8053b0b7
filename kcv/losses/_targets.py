"""Shared target handling for dense (segmentation) losses: sparse or one-hot, logits or not."""

import tensorflow as tf


def dense_targets(y_true, y_pred, from_logits, ignore_index=None):
    """Brings targets and predictions of a segmentation loss to one form.

    Args:
        y_true: sparse int labels `[B, H, W]` (or `[B, H, W, 1]` when `y_pred` has more than one
            channel), one-hot `[B, H, W, C]`, or for binary segmentation (`C == 1`) 0/1 values
            `[B, H, W, 1]`.
        y_pred: `[B, H, W, C]` probabilities, or logits with `from_logits=True` (sigmoid when
            `C == 1`, softmax otherwise).
        from_logits: whether `y_pred` holds logits.
        ignore_index: a label value whose pixels count nowhere (sparse or binary targets only).

    Returns:
        `(probs, onehot, valid)`, float32: probabilities and one-hot targets `[B, H, W, C]`
        with ignored pixels zeroed, and `valid` `[B, H, W, 1]` (1 where the pixel counts).
    """
    y_pred = tf.convert_to_tensor(y_pred)
    logits = tf.cast(y_pred, tf.float32)
    rank = y_pred.shape.rank
    num_classes = y_pred.shape[-1]
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
        target = tf.cast(y_true, tf.float32)
        if ignore_index is not None:
            valid = tf.cast(tf.not_equal(target, float(ignore_index)), tf.float32)
        else:
            valid = tf.ones_like(target)
        target = tf.reshape(target * valid, tf.shape(probs))
        valid = tf.reshape(valid, tf.shape(probs))
        return probs * valid, target, valid
    probs = tf.nn.softmax(logits, axis=-1) if from_logits else logits
    if y_true.shape.rank == rank and y_true.shape[-1] == num_classes:
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` needs sparse integer targets; one-hot targets cannot mark ignored "
                f"pixels. Received: ignore_index={ignore_index!r} with y_true.shape={y_true.shape}"
            )
        onehot = tf.cast(y_true, tf.float32)
        valid = tf.ones_like(onehot[..., :1])
        return probs, onehot, valid
    if y_true.shape.rank == rank and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape.rank != rank - 1:
        raise ValueError(
            f"`y_true` must be sparse labels of shape {y_pred.shape[:-1]} or one-hot of shape "
            f"{y_pred.shape}. Received: y_true.shape={y_true.shape}"
        )
    labels = tf.cast(y_true, tf.int32)
    if ignore_index is not None:
        valid_bool = tf.not_equal(labels, int(ignore_index))
    else:
        valid_bool = tf.ones_like(labels, dtype=tf.bool)
    onehot = tf.one_hot(tf.where(valid_bool, labels, 0), num_classes, dtype=tf.float32)
    valid = tf.cast(valid_bool, tf.float32)[..., None]
    return probs * valid, onehot * valid, valid


def spatial_axes(tensor):
    """The axes between batch and channels (e.g. (1, 2) for NHWC)."""
    return list(range(1, tensor.shape.rank - 1))
