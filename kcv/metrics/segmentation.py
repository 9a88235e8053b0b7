"""Segmentation metrics over whole data sets: Dice coefficient and IoU from a confusion matrix."""

import keras
import tensorflow as tf


def _labels(y_true, y_pred, threshold, from_logits, ignore_index):
    """Flattened (true, predicted) int labels of the pixels that count."""
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    rank = y_pred.shape.rank
    channels = y_pred.shape[-1]
    if channels == 1:  # binary: one probability (or logit) channel
        cut = 0.0 if from_logits else threshold
        pred = tf.cast(tf.cast(y_pred[..., 0], tf.float32) > cut, tf.int32)
        if y_true.shape.rank == rank:
            y_true = y_true[..., 0]
        true = tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32)
    else:
        pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        if y_true.shape.rank == rank and y_true.shape[-1] == channels:
            true = tf.argmax(y_true, axis=-1, output_type=tf.int32)
        else:
            if y_true.shape.rank == rank and y_true.shape[-1] == 1:
                y_true = y_true[..., 0]
            true = tf.cast(y_true, tf.int32)
    true = tf.reshape(true, [-1])
    pred = tf.reshape(pred, [-1])
    if ignore_index is not None:
        keep = tf.not_equal(true, int(ignore_index))
        true = tf.boolean_mask(true, keep)
        pred = tf.boolean_mask(pred, keep)
    return true, pred


class _ConfusionMetric(keras.metrics.Metric):
    """Accumulates a `num_classes x num_classes` confusion matrix (rows: truth, cols: prediction)."""

    def __init__(self, num_classes, class_ids=None, ignore_index=None, threshold=0.5,
                 from_logits=False, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                "`num_classes` must be an int >= 2 (binary segmentation has 2 classes: "
                f"background and foreground). Received: num_classes={num_classes!r}"
            )
        if class_ids is not None:
            bad = [c for c in class_ids if not isinstance(c, int) or not 0 <= c < num_classes]
            if bad or not class_ids:
                raise ValueError(
                    f"`class_ids` must be class indices in [0, {num_classes}). "
                    f"Received: class_ids={class_ids!r}"
                )
        self.num_classes = num_classes
        self.class_ids = list(class_ids) if class_ids is not None else None
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.from_logits = from_logits
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float32",
            name="confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("`sample_weight` is not supported by kcv segmentation metrics; use "
                             "`ignore_index` to leave pixels out.")
        true, pred = _labels(y_true, y_pred, self.threshold, self.from_logits, self.ignore_index)
        cm = tf.math.confusion_matrix(true, pred, num_classes=self.num_classes, dtype=tf.float32)
        self.confusion.assign_add(cm)

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def _components(self):
        cm = tf.convert_to_tensor(self.confusion)
        tp = tf.linalg.diag_part(cm)
        predicted = tf.reduce_sum(cm, axis=0)
        actual = tf.reduce_sum(cm, axis=1)
        return tp, predicted, actual

    def _mean_over(self, scores, present):
        ids = self.class_ids if self.class_ids is not None else list(range(self.num_classes))
        scores = tf.gather(scores, ids)
        present = tf.cast(tf.gather(present, ids), tf.float32)
        count = tf.reduce_sum(present)
        # No selected class occurs in truth or prediction: perfect agreement.
        return tf.where(count > 0, tf.reduce_sum(scores * present) / tf.maximum(count, 1.0), 1.0)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "class_ids": self.class_ids,
            "ignore_index": self.ignore_index,
            "threshold": self.threshold,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="kcv")
class DiceCoefficient(_ConfusionMetric):
    """Hard Dice coefficient per class over everything seen, averaged over classes.

    Predictions are turned into labels (argmax; for one channel, `p > threshold`), pixel counts
    are accumulated over all batches, and for each class `Dice = 2 TP / (2 TP + FP + FN)`. The
    result is the mean over `class_ids` (default: all classes) of the classes that occur in the
    truth or the prediction; 1.0 when none does.

    Args:
        num_classes: number of classes (2 for binary segmentation with one sigmoid channel).
        class_ids: the classes to average, e.g. `[1, 2, 3]` to leave out the background.
        ignore_index: label value of pixels to leave out.
        threshold: probability cut for one-channel (binary) predictions.
        from_logits: one-channel predictions are logits (cut at 0).
        name, dtype: as `keras.metrics.Metric`.

    Example:
        >>> import numpy as np
        >>> metric = DiceCoefficient(num_classes=4, class_ids=[1, 2, 3])
        >>> y_true = np.array([[[0, 1, 1, 2]]])  # [B=1, H=1, W=4]
        >>> y_pred = np.eye(4, dtype="float32")[[[[0, 1, 2, 2]]]]  # one-hot scores [1, 1, 4, 4]
        >>> metric.update_state(y_true, y_pred)
        >>> round(float(metric.result()), 4)  # classes 1 and 2: 2 TP / (2 TP + FP + FN) = 2/3
        0.6667
    """

    def __init__(self, num_classes, class_ids=None, ignore_index=None, threshold=0.5,
                 from_logits=False, name="dice", dtype=None):
        super().__init__(num_classes, class_ids, ignore_index, threshold, from_logits, name, dtype)

    def per_class(self):
        """Dice of every class, `[num_classes]` (0 for classes never seen)."""
        tp, predicted, actual = self._components()
        return tf.math.divide_no_nan(2.0 * tp, predicted + actual)

    def result(self):
        _, predicted, actual = self._components()
        return self._mean_over(self.per_class(), (predicted + actual) > 0)


@keras.saving.register_keras_serializable(package="kcv")
class MeanIoU(_ConfusionMetric):
    """Intersection over union per class from a confusion matrix, averaged over classes.

    `IoU = TP / (TP + FP + FN)` per class; the mean is over `class_ids` (default all) of the
    classes present in truth or prediction, as `keras.metrics.MeanIoU` does. `per_class()` gives
    every class's IoU.

    Args:
        num_classes, class_ids, ignore_index, threshold, from_logits, name, dtype: as
            `DiceCoefficient`. Unlike `keras.metrics.MeanIoU`, it takes probabilities or one-hot
            targets directly.
    """

    def __init__(self, num_classes, class_ids=None, ignore_index=None, threshold=0.5,
                 from_logits=False, name="mean_iou", dtype=None):
        super().__init__(num_classes, class_ids, ignore_index, threshold, from_logits, name, dtype)

    def per_class(self):
        """IoU of every class, `[num_classes]` (0 for classes never seen)."""
        tp, predicted, actual = self._components()
        return tf.math.divide_no_nan(tp, predicted + actual - tp)

    def result(self):
        _, predicted, actual = self._components()
        return self._mean_over(self.per_class(), (predicted + actual) > 0)
