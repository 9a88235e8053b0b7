"""Tversky, dense focal, Dice + focal and weighted cross-entropy against the papers' formulas
(NumPy, explicit loops), hand-computed cases and the Keras built-ins where they meet."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from loss_references import (
    np_dice_per_image,
    np_focal,
    np_sigmoid,
    np_softmax,
    np_tversky_paper,
)

import kcv
from kcv.losses import (
    DiceFocalLoss,
    FocalLoss,
    TverskyLoss,
    WeightedCrossentropy,
    dense_focal_loss,
    dice_focal_loss,
    dice_loss,
    tversky_loss,
    weighted_crossentropy,
)

from kcv_testing import check_loss

# --- Tversky ---------------------------------------------------------------------------------

def test_tversky_hand_computed_binary_case():
    # truth [[1,1],[0,0]], prediction [[0.5,1],[0.5,0]]: TP 1.5, FP 0.5, FN 0.5.
    # alpha 0.3 (FP), beta 0.7 (FN), smooth 0: 1.5 / (1.5 + 0.15 + 0.35) = 0.75 -> loss 0.25.
    # With the roles swapped the numbers are the same here, so make FP != FN:
    # prediction [[0.5,1],[1,0]]: TP 1.5, FP 1, FN 0.5 -> 1.5 / (1.5 + 0.3 + 0.35) = 1.5 / 2.15.
    y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]]])
    y_pred = np.array([[[[0.5], [1.0]], [[1.0], [0.0]]]], np.float32)
    np.testing.assert_allclose(tversky_loss(y_true, y_pred, 0.3, 0.7, smooth=0.0),
                               [1 - 1.5 / 2.15], rtol=1e-6)
    np.testing.assert_allclose(tversky_loss(y_true, y_pred, 0.7, 0.3, smooth=0.0),
                               [1 - 1.5 / (1.5 + 0.7 + 0.15)], rtol=1e-6)


def test_tversky_multiclass_matches_paper_formula(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    expected = np_tversky_paper(labels, probs, 0.3, 0.7)
    np.testing.assert_allclose(tversky_loss(labels, probs, 0.3, 0.7), expected, rtol=1e-5)
    np.testing.assert_allclose(tversky_loss(np.eye(4)[labels], logits, 0.3, 0.7,
                                            from_logits=True), expected, rtol=1e-5)
    marked = labels.copy()
    marked[:, 0, :] = 255
    np.testing.assert_allclose(tversky_loss(marked, probs, 0.3, 0.7, ignore_index=255),
                               np_tversky_paper(labels, probs, 0.3, 0.7, valid=marked != 255),
                               rtol=1e-5)
    np.testing.assert_allclose(TverskyLoss(0.3, 0.7)(labels, probs), expected.mean(), rtol=1e-5)


def test_tversky_with_half_weights_is_dice(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    np.testing.assert_allclose(tversky_loss(labels, probs, 0.5, 0.5, smooth=0.0),
                               dice_loss(labels, probs, smooth=0.0), rtol=1e-5)


def test_tversky_equals_keras_builtin_with_alpha_and_beta_swapped():
    # keras.losses.Tversky (<= 3.15) multiplies alpha onto the false negatives: the paper's
    # alpha=0.3, beta=0.7 is Keras's alpha=0.7, beta=0.3.
    rng = np.random.default_rng(1)
    y_true = (rng.random((4, 8, 8, 1)) > 0.6).astype(np.float32)
    y_pred = rng.random((4, 8, 8, 1)).astype(np.float32)
    ours = tversky_loss(y_true, y_pred, alpha=0.3, beta=0.7, smooth=0.0)
    swapped = keras.losses.Tversky(alpha=0.7, beta=0.3, axis=(1, 2, 3), reduction=None)(
        y_true, y_pred)
    np.testing.assert_allclose(ours, swapped, rtol=1e-5)
    same_names = keras.losses.Tversky(alpha=0.3, beta=0.7, axis=(1, 2, 3), reduction=None)(
        y_true, y_pred)
    assert np.max(np.abs(np.asarray(ours) - np.asarray(same_names))) > 1e-3


def test_tversky_beta_above_alpha_punishes_false_negatives_more():
    # 8 object pixels. `under` finds half of them (TP 4, FN 4); `over` finds all of them and
    # 4 background pixels (TP 8, FP 4). Paper weights 0.3/0.7: 1 - 4/6.8 > 1 - 8/9.2.
    y_true = np.zeros((2, 4, 4, 1), np.float32)
    y_true[:, :2] = 1.0
    under = np.zeros_like(y_true)
    under[:, :1] = 1.0
    over = np.zeros_like(y_true)
    over[:, :3] = 1.0
    assert float(TverskyLoss(0.3, 0.7)(y_true, under)) > float(TverskyLoss(0.3, 0.7)(y_true, over))
    assert float(TverskyLoss(0.7, 0.3)(y_true, under)) < float(TverskyLoss(0.7, 0.3)(y_true, over))


# --- dense focal -----------------------------------------------------------------------------

def test_focal_hand_computed_binary_pixel():
    # p = 0.8 on a foreground pixel, gamma 2, alpha 0.25: -0.25 * 0.2^2 * log(0.8).
    # p = 0.8 on a background pixel: p_t = 0.2, -0.75 * 0.8^2 * log(0.2).
    y_true = np.array([[[[1.0], [0.0]]]])
    y_pred = np.array([[[[0.8], [0.8]]]], np.float32)
    expected = (-0.25 * 0.04 * np.log(0.8) - 0.75 * 0.64 * np.log(0.2)) / 2
    np.testing.assert_allclose(dense_focal_loss(y_true, y_pred, 2.0, 0.25), [expected], rtol=1e-5)


def test_focal_binary_equals_keras_binary_focal_crossentropy():
    rng = np.random.default_rng(2)
    y_true = (rng.random((3, 6, 6, 1)) > 0.7).astype(np.float32)
    logits = rng.normal(size=(3, 6, 6, 1)).astype(np.float32) * 2
    builtin = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, reduction=None)
    expected = np.asarray(builtin(y_true, logits)).reshape(3, -1).mean(1)
    np.testing.assert_allclose(dense_focal_loss(y_true, logits, 2.0, 0.25, from_logits=True),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(dense_focal_loss(y_true, np_sigmoid(logits), 2.0, 0.25),
                               expected, rtol=1e-4)


def test_focal_multiclass_equals_keras_categorical_focal_crossentropy(multiclass):
    labels, logits = multiclass
    builtin = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0, from_logits=True,
                                                        reduction=None)
    expected = np.asarray(builtin(np.eye(4)[labels], logits)).reshape(3, -1).mean(1)
    np.testing.assert_allclose(dense_focal_loss(labels, logits, 2.0, 0.25, from_logits=True),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(dense_focal_loss(np.eye(4)[labels], np_softmax(logits), 2.0, 0.25),
                               expected, rtol=1e-4)


def test_focal_per_class_alpha_and_ignore_index_match_loop_reference(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    alpha = [0.1, 0.5, 1.0, 2.0]
    marked = labels.copy()
    marked[:, :, -2:] = -1
    expected = np_focal(labels, probs, 1.5, alpha, valid=marked != -1)
    np.testing.assert_allclose(dense_focal_loss(marked, logits, 1.5, alpha, from_logits=True,
                                                ignore_index=-1), expected, rtol=1e-5)


def test_focal_with_gamma_zero_is_crossentropy(multiclass):
    labels, logits = multiclass
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
        labels, logits)
    np.testing.assert_allclose(dense_focal_loss(labels, logits, 0.0, from_logits=True),
                               np.asarray(ce).reshape(3, -1).mean(1), rtol=1e-5)


def test_focal_gradient_is_finite_at_saturated_probabilities():
    y_true = np.array([[[[1.0], [0.0]]]])
    for gamma in (0.5, 2.0):
        z = tf.Variable([[[[30.0], [-30.0]]]])
        with tf.GradientTape() as tape:
            loss = dense_focal_loss(y_true, z, gamma, from_logits=True)
        assert np.all(np.isfinite(tape.gradient(loss, z)))


# --- Dice + focal, weighted cross-entropy -----------------------------------------------------

def test_dice_focal_is_the_weighted_sum(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    expected = 0.7 * np_dice_per_image(labels, probs) + 2.0 * np_focal(labels, probs, 2.0)
    np.testing.assert_allclose(dice_focal_loss(labels, logits, 0.7, 2.0, from_logits=True),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(DiceFocalLoss(0.7, 2.0, from_logits=True)(labels, logits),
                               expected.mean(), rtol=1e-5)


def test_weighted_crossentropy_matches_torch_convention(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    weights = np.array([0.2, 1.0, 3.0, 0.5])
    marked = labels.copy()
    marked[0, 0, :] = 255
    expected = []
    for i in range(3):
        keep = marked[i] != 255
        lab = labels[i][keep]
        ce = -np.log(probs[i][keep][np.arange(lab.size), lab])
        expected.append((weights[lab] * ce).sum() / weights[lab].sum())
    got = weighted_crossentropy(marked, logits, list(weights), from_logits=True, ignore_index=255)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    loss = WeightedCrossentropy(list(weights), from_logits=True, ignore_index=255)
    np.testing.assert_allclose(loss(marked, logits), np.mean(expected), rtol=1e-5)


def test_weighted_crossentropy_without_weights_is_keras_crossentropy():
    rng = np.random.default_rng(3)
    y_true = (rng.random((2, 5, 5, 1)) > 0.5).astype(np.float32)
    probs = rng.uniform(0.05, 0.95, size=(2, 5, 5, 1)).astype(np.float32)
    bce = keras.losses.BinaryCrossentropy(reduction=None)(y_true, probs)
    np.testing.assert_allclose(weighted_crossentropy(y_true, probs),
                               np.asarray(bce).reshape(2, -1).mean(1), rtol=1e-4)
    # binary class weights [background, foreground]
    w = np.where(y_true[..., 0] > 0, 4.0, 1.0)
    ce = -(y_true * np.log(probs) + (1 - y_true) * np.log(1 - probs))[..., 0]
    expected = (w * ce).reshape(2, -1).sum(1) / w.reshape(2, -1).sum(1)
    np.testing.assert_allclose(weighted_crossentropy(y_true, probs, [1.0, 4.0]), expected,
                               rtol=1e-4)


# --- training, serialization, errors ----------------------------------------------------------

@pytest.mark.parametrize("loss", [
    TverskyLoss(0.3, 0.7, from_logits=True),
    DiceFocalLoss(from_logits=True, alpha=[0.5, 1.0, 1.0, 1.0]),
    WeightedCrossentropy([0.5, 1.0, 1.0, 1.0], from_logits=True),
])
def test_gradient_step_lowers_the_loss(multiclass, loss):
    labels, logits = multiclass
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(labels, z)
    grad = tape.gradient(value, z)
    assert np.all(np.isfinite(grad))
    assert float(loss(labels, z - 5.0 * grad)) < float(value)


def test_binary_check_loss(binary):
    y_true, logits = binary
    check_loss(tversky_loss, TverskyLoss, y_true, np_sigmoid(logits), alpha=0.3, beta=0.7)
    check_loss(dense_focal_loss, FocalLoss, y_true, logits, mode="dense", alpha=0.25,
               from_logits=True)


@pytest.mark.parametrize("make, match", [
    (lambda: TverskyLoss(alpha=-0.1), "alpha"),
    (lambda: TverskyLoss(beta="x"), "beta"),
    (lambda: DiceFocalLoss(gamma=-1), "gamma"),
    (lambda: DiceFocalLoss(alpha=[0.5, -1]), "alpha"),
    (lambda: WeightedCrossentropy(class_weights=[0, 0]), "class_weights"),
    (lambda: dense_focal_loss(np.zeros((1, 2, 2), np.int32), np.full((1, 2, 2, 3), 1 / 3),
                              alpha=[1.0, 1.0]), r"alpha.*one weight per class \(3"),
    (lambda: weighted_crossentropy(np.zeros((1, 2, 2, 1)), np.full((1, 2, 2, 1), 0.5),
                                   class_weights=[1.0]), r"class_weights.*\(2; binary"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- kcv.losses.FocalLoss, dense mode ---------------------------------------------------------

def test_focal_loss_class_dense_mode_multiclass(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    alpha = [0.1, 0.5, 1.0, 2.0]
    marked = labels.copy()
    marked[1, :3] = 255
    expected = np_focal(labels, probs, 2.0, alpha, valid=marked != 255)
    loss = kcv.losses.FocalLoss(alpha=alpha, mode="dense", ignore_index=255, from_logits=True)
    np.testing.assert_allclose(loss(marked, logits), expected.mean(), rtol=1e-5)
    builtin = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0, from_logits=True)
    np.testing.assert_allclose(kcv.losses.FocalLoss(mode="dense", from_logits=True)(
                                   np.eye(4)[labels], logits),
                               builtin(np.eye(4)[labels], logits), rtol=1e-5)


def test_focal_loss_class_dense_mode_binary_equals_sigmoid_mode():
    rng = np.random.default_rng(4)
    y_true = (rng.random((2, 6, 6, 1)) > 0.6).astype(np.float32)
    logits = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    dense = kcv.losses.FocalLoss(alpha=0.25, mode="dense", from_logits=True)(y_true, logits)
    sigmoid = kcv.losses.FocalLoss(alpha=0.25, from_logits=True)(y_true, logits)
    np.testing.assert_allclose(dense, sigmoid, rtol=1e-5)
    # sparse [B, H, W] 0/1 targets against the one channel
    np.testing.assert_allclose(kcv.losses.FocalLoss(alpha=0.25, mode="dense", from_logits=True)(
        y_true[..., 0].astype(np.int32), logits), sigmoid, rtol=1e-5)


def test_focal_loss_defaults_follow_keras():
    # mode="sigmoid" (RetinaNet) and, as every Keras loss, probabilities unless from_logits=True
    config = kcv.losses.FocalLoss().get_config()
    assert config["mode"] == "sigmoid" and config["from_logits"] is False
    y_true, probs = np.array([[1.0, 0.0]]), np.array([[0.8, 0.3]], np.float32)
    expected = np.mean([-0.25 * 0.2**2 * np.log(0.8), -0.75 * 0.3**2 * np.log(0.7)])
    np.testing.assert_allclose(float(kcv.losses.FocalLoss()(y_true, probs)), expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "softmax"}, "mode"),
    ({"ignore_index": 255}, "ignore_index"),
    ({"mode": "dense", "alpha": [1.0, -2.0]}, "alpha"),
    ({"mode": "dense", "alpha": [1.0, 1.0], "gamma": -1}, "gamma"),
])
def test_focal_loss_class_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kcv.losses.FocalLoss(**kwargs)
