"""Dice and BCE+Dice against NumPy references, hand-computed cases and Keras built-ins; the
shared contract of every segmentation loss (`check_loss`, labels outside the classes, shapes)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from loss_references import np_dice_per_image, np_softmax

from kcv.losses import (
    BCEDiceLoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    WeightedCrossentropy,
    bce_dice_loss,
    dense_focal_loss,
    dice_focal_loss,
    dice_loss,
    tversky_loss,
    weighted_crossentropy,
)

from kcv_testing import check_loss


def test_hand_computed_binary_case():
    # One 2x2 image: truth [[1,1],[0,0]], prediction [[0.5,1],[0,0]]:
    # intersection 1.5, sums 1.5 + 2 -> Dice (3 + 1) / (3.5 + 1) = 8/9, loss 1/9.
    y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]]])
    y_pred = np.array([[[[0.5], [1.0]], [[0.0], [0.0]]]])
    np.testing.assert_allclose(dice_loss(y_true, y_pred), [1 / 9], rtol=1e-6)


def test_binary_with_smooth_zero_equals_keras_dice_per_image():
    rng = np.random.default_rng(1)
    y_true = (rng.random((4, 8, 8, 1)) > 0.6).astype(np.float32)
    y_pred = rng.random((4, 8, 8, 1)).astype(np.float32)
    ours = dice_loss(y_true, y_pred, smooth=0.0)
    keras_loss = keras.losses.Dice(axis=(1, 2, 3), reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(ours, keras_loss, rtol=1e-5)


def test_multiclass_sparse_onehot_and_logits_agree_with_numpy(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    expected = np_dice_per_image(labels, probs)
    np.testing.assert_allclose(dice_loss(labels, probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(np.eye(4)[labels], probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(labels[..., None], probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(labels, logits, from_logits=True), expected, rtol=1e-5)


def test_class_weights_and_ignore_index(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    weights = [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(dice_loss(labels, probs, class_weights=weights),
                               np_dice_per_image(labels, probs, weights=weights), rtol=1e-5)
    marked = labels.copy()
    marked[:, :2, :] = 255
    expected = np_dice_per_image(labels, probs, valid=marked != 255)
    np.testing.assert_allclose(dice_loss(marked, probs, ignore_index=255), expected, rtol=1e-5)


def test_class_reduces_over_batch_and_perfect_prediction_is_zero(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    np.testing.assert_allclose(DiceLoss()(labels, probs), np_dice_per_image(labels, probs).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(DiceLoss()(labels, np.eye(4)[labels]), 0.0, atol=1e-6)


def test_bce_dice_binary_equals_keras_bce_plus_dice():
    rng = np.random.default_rng(2)
    y_true = (rng.random((3, 6, 6, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)(y_true, logits)
    bce = np.asarray(bce).reshape(3, -1).mean(1)
    probs = 1 / (1 + np.exp(-logits))
    inter = (probs * y_true).reshape(3, -1).sum(1)
    d = 1 - (2 * inter + 1) / (probs.reshape(3, -1).sum(1) + y_true.reshape(3, -1).sum(1) + 1)
    np.testing.assert_allclose(bce_dice_loss(y_true, logits, from_logits=True), bce + d,
                               rtol=1e-5)
    np.testing.assert_allclose(BCEDiceLoss(bce_weight=0.5, dice_weight=2.0, from_logits=True)(
        y_true, logits), (0.5 * bce + 2 * d).mean(), rtol=1e-5)


def test_bce_dice_multiclass_uses_categorical_crossentropy(multiclass):
    labels, logits = multiclass
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
        labels, logits)
    ce = np.asarray(ce).reshape(3, -1).mean(1)
    expected = ce + np_dice_per_image(labels, np_softmax(logits))
    np.testing.assert_allclose(bce_dice_loss(labels, logits, from_logits=True), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(bce_dice_loss(labels, np_softmax(logits)), expected, rtol=1e-4)


def test_gradient_is_finite_and_points_downhill(multiclass):
    labels, logits = multiclass
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = DiceLoss(from_logits=True)(labels, z)
    grad = tape.gradient(loss, z)
    assert np.all(np.isfinite(grad))
    stepped = DiceLoss(from_logits=True)(labels, z - 10.0 * grad)
    assert float(stepped) < float(loss)


@pytest.mark.parametrize("fn, cls, kwargs", [
    (dice_loss, DiceLoss, {"smooth": 0.5, "class_weights": [1.0, 2.0, 1.0, 0.5],
                           "ignore_index": 9, "from_logits": True}),
    (bce_dice_loss, BCEDiceLoss, {"bce_weight": 0.3, "dice_weight": 0.7, "from_logits": True}),
    (tversky_loss, TverskyLoss, {"alpha": 0.3, "beta": 0.7, "smooth": 0.0,
                                 "class_weights": [1.0, 2.0, 1.0, 1.0], "ignore_index": 255,
                                 "from_logits": True}),
    (dice_focal_loss, DiceFocalLoss, {"dice_weight": 0.5, "focal_weight": 2.0, "gamma": 1.0,
                                      "alpha": [0.25, 0.75, 1.0, 1.0], "from_logits": True}),
    (weighted_crossentropy, WeightedCrossentropy, {"class_weights": [0.1, 0.9, 1.0, 2.0],
                                                   "ignore_index": -1, "from_logits": True}),
    (dense_focal_loss, FocalLoss, {"mode": "dense", "alpha": [0.2, 0.8, 1.0, 1.0],
                                   "gamma": 1.5, "ignore_index": 255, "from_logits": True}),
])
def test_check_loss(multiclass, fn, cls, kwargs):
    labels, logits = multiclass
    labels = labels.copy()
    labels[0, 0] = kwargs.get("ignore_index", 0)
    check_loss(fn, cls, labels, logits, **kwargs)


def test_binary_dice_check_loss(binary):
    y_true, logits = binary
    check_loss(dice_loss, DiceLoss, y_true, np.asarray(tf.sigmoid(logits)), smooth=0.0)


def test_errors():
    with pytest.raises(ValueError, match="class_weights"):
        DiceLoss(class_weights=[-1, 1])
    with pytest.raises(ValueError, match="class_weights"):
        dice_loss(np.zeros((1, 2, 2), np.int32), np.full((1, 2, 2, 3), 1 / 3), class_weights=[1, 1])
    with pytest.raises(ValueError, match="ignore_index"):
        dice_loss(np.eye(3)[np.zeros((1, 2, 2), int)], np.full((1, 2, 2, 3), 1 / 3),
                  ignore_index=0)
    with pytest.raises(ValueError, match="y_true"):
        dice_loss(np.zeros((1, 2), np.int32), np.full((1, 2, 2, 3), 1 / 3))


# --- labels outside the classes, mismatched shapes (every segmentation loss) -------------------

DENSE_LOSSES = [dice_loss, tversky_loss, dense_focal_loss, dice_focal_loss, bce_dice_loss,
                weighted_crossentropy]
DENSE_CLASSES = [DiceLoss, TverskyLoss, DiceFocalLoss, BCEDiceLoss, WeightedCrossentropy,
                 lambda **kw: FocalLoss(mode="dense", **kw)]
OUTSIDE = r"`y_true` holds labels outside \[0, 4\) \(y_pred has 4 classes\)"


@pytest.mark.parametrize("fn", DENSE_LOSSES)
@pytest.mark.parametrize("label", [4, 255, -1])
def test_sparse_label_outside_the_classes_is_an_error(multiclass, fn, label):
    labels, logits = multiclass
    labels = labels.copy()
    labels[1, 2, 3] = label
    with pytest.raises(ValueError, match=OUTSIDE + r".*Received: y_true values \[" + str(label)):
        fn(labels, logits, from_logits=True)
    # a label equal to ignore_index is left out; another bad label still is an error
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=OUTSIDE + " other than ignore_index=7"):
        fn(labels, logits, from_logits=True, ignore_index=7)
    labels[1, 2, 3] = 7  # now every label outside the classes is ignore_index: no error
    # (the values of the ignore path are checked against NumPy in each loss's own tests)
    assert np.all(np.isfinite(fn(labels, logits, from_logits=True, ignore_index=7)))


@pytest.mark.parametrize("make", DENSE_CLASSES)
def test_sparse_label_outside_the_classes_fails_in_graph_mode(multiclass, make):
    labels, logits = multiclass
    labels = labels.copy()
    labels[2, 4, 5] = 4
    loss = make(from_logits=True)
    graph = tf.function(lambda y, p: loss(y, p))
    with pytest.raises(tf.errors.InvalidArgumentError, match=OUTSIDE):
        graph(labels, logits)
    np.testing.assert_allclose(graph(labels % 4, logits), loss(labels % 4, logits), rtol=1e-6)


@pytest.mark.parametrize("fn", DENSE_LOSSES)
def test_binary_target_outside_zero_one_is_an_error(binary, fn):
    y_true, logits = binary
    y_true = y_true.copy()
    y_true[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match=r"binary segmentation.*holds values outside \[0, 1\]"):
        fn(y_true, logits, from_logits=True)
    y_true[0, 0, 0, 0] = 255.0
    assert np.all(np.isfinite(fn(y_true, logits, from_logits=True, ignore_index=255)))


@pytest.mark.parametrize("fn", DENSE_LOSSES)
@pytest.mark.parametrize("y_true_shape", [(3, 5, 7), (3, 5, 7, 4), (2, 5, 6)])
def test_mismatched_shapes_name_both(fn, y_true_shape):
    y_pred = np.full((3, 5, 6, 4), 0.25, np.float32)
    y_true = np.zeros(y_true_shape, np.int32)
    with pytest.raises(ValueError, match=rf"y_true.shape=\({', '.join(map(str, y_true_shape))}\)"
                                         r".*y_pred.shape=\(3, 5, 6, 4\)"):
        fn(y_true, y_pred)


@pytest.mark.parametrize("fn", DENSE_LOSSES)
def test_mismatched_binary_shapes_name_both(fn):
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 4, 4, 1\).*y_pred.shape=\(2, 4, 5, 1\)"):
        fn(np.zeros((2, 4, 4, 1), np.float32), np.full((2, 4, 5, 1), 0.5, np.float32))


def test_mismatched_shapes_known_only_at_run_time_fail_in_graph_mode():
    spec = tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None, None, None, 3])
    graph = tf.function(lambda y, p: dice_loss(y, p), input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError, match="spatial dimensions of `y_pred`"):
        graph(np.zeros((1, 4, 4), np.int32), np.full((1, 4, 5, 3), 1 / 3, np.float32))
    np.testing.assert_allclose(graph(np.zeros((1, 4, 4), np.int32),
                                     np.full((1, 4, 4, 3), 1 / 3, np.float32)),
                               dice_loss(np.zeros((1, 4, 4), np.int32),
                                         np.full((1, 4, 4, 3), 1 / 3, np.float32)), rtol=1e-6)
