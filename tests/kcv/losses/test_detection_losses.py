"""Box losses and the focal loss against hand-computed cases, NumPy formulas and Keras built-ins."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from loss_references import np_sigmoid_focal

from kcv.losses import (
    FocalLoss,
    IoULoss,
    SmoothL1Loss,
    box_iou_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

from kcv_testing import check_loss

UNIT = [0.0, 0.0, 1.0, 1.0]


def test_box_iou_loss_hand_computed():
    far = [0.0, 2.0, 1.0, 3.0]  # disjoint, enclosing 1 x 3, centres 2 apart, diag^2 = 10
    half = [0.0, 0.0, 1.0, 2.0]  # IoU 1/2, centres 0.5 apart, diag^2 = 5
    gt = np.array([UNIT, UNIT, UNIT], np.float32)
    pred = np.array([UNIT, far, half], np.float32)
    np.testing.assert_allclose(box_iou_loss(gt, pred, "iou").numpy(), [0, 1, 0.5], atol=1e-6)
    giou = box_iou_loss(gt, pred, "giou").numpy()
    np.testing.assert_allclose(giou, [0, 1 + 1 / 3, 0.5 + 0], atol=1e-6)
    assert giou[1] > 1  # disjoint boxes: GIoU loss above 1
    np.testing.assert_allclose(box_iou_loss(gt, pred, "diou").numpy(),
                               [0, 1 + 0.4, 0.5 + 0.25 / 5], atol=1e-6)
    # CIoU for `half`: v = 4/pi^2 (atan(2) - atan(1))^2, alpha = v / (1 - 1/2 + v).
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (0.5 + v)
    np.testing.assert_allclose(box_iou_loss(gt[2:], pred[2:], "ciou").numpy(),
                               [0.5 + 0.05 + alpha * v], atol=1e-6)


@pytest.mark.parametrize("mode", ["giou", "ciou"])
def test_iou_loss_check_loss(mode):
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 10, (2, 5, 2))
    gt = np.concatenate([yx, yx + rng.uniform(1, 5, (2, 5, 2))], -1).astype(np.float32)
    pred = gt + rng.normal(0, 0.5, gt.shape).astype(np.float32)
    check_loss(box_iou_loss, IoULoss, gt, pred, mode=mode)


def test_box_iou_loss_trains_disjoint_boxes_with_giou_not_iou():
    gt = tf.constant([UNIT])
    pred = tf.Variable([[0.0, 2.0, 1.0, 3.0]])
    grads = {}
    for mode in ("iou", "giou"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(box_iou_loss(gt, pred, mode))
        grads[mode] = tape.gradient(loss, pred).numpy()
    assert not grads["iou"].any() and grads["giou"].any()


def test_smooth_l1_matches_hand_and_huber():
    np.testing.assert_allclose(smooth_l1_loss([0.0, 0.0, 0.0], [0.5, 3.0, -0.1], beta=1.0).numpy(),
                               [0.125, 2.5, 0.005], rtol=1e-6)
    np.testing.assert_allclose(smooth_l1_loss([0.0, 0.0], [0.05, 0.5], beta=0.1).numpy(),
                               [0.0125, 0.45], rtol=1e-6)
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    # beta = 1: smooth L1 is the Huber loss with delta = 1.
    np.testing.assert_allclose(float(SmoothL1Loss(beta=1.0)(y, p)),
                               float(keras.losses.Huber(delta=1.0)(y, p)), rtol=1e-6)
    check_loss(smooth_l1_loss, SmoothL1Loss, y, p, function_axis=-1, beta=0.2)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_focal_matches_paper_and_keras(alpha, gamma):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (3, 7)).astype(np.float32)
    y = (rng.uniform(size=(3, 7)) < 0.3).astype(np.float32)
    np.testing.assert_allclose(sigmoid_focal_loss(y, x, alpha, gamma, from_logits=True).numpy(),
                               np_sigmoid_focal(y, x, alpha, gamma), rtol=1e-5, atol=1e-7)
    keras_loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=alpha,
                                                      gamma=gamma, from_logits=True)
    np.testing.assert_allclose(float(FocalLoss(alpha, gamma, from_logits=True)(y, x)),
                               float(keras_loss(y, x)), rtol=1e-5)
    # probabilities (the default, as Keras): the same numbers
    probs = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(sigmoid_focal_loss(y, probs, alpha, gamma).numpy(),
                               np_sigmoid_focal(y, x, alpha, gamma), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(FocalLoss(alpha, gamma)(y, probs)),
                               float(keras.losses.BinaryFocalCrossentropy(
                                   apply_class_balancing=True, alpha=alpha, gamma=gamma)(y, probs)),
                               rtol=1e-4)


def test_focal_without_alpha_and_gamma_is_binary_crossentropy():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (4, 5)).astype(np.float32)
    y = (rng.uniform(size=(4, 5)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        float(FocalLoss(alpha=None, gamma=0.0, from_logits=True)(y, x)),
        float(keras.losses.BinaryCrossentropy(from_logits=True)(y, x)), rtol=1e-5)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.3, "gamma": 1.0, "from_logits": True},
                                    {"alpha": None, "gamma": 2.0}])
def test_focal_check_loss(kwargs):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2, (4, 6)).astype(np.float32)
    y = (rng.uniform(size=(4, 6)) < 0.4).astype(np.float32)
    pred = x if kwargs.get("from_logits") else 1 / (1 + np.exp(-x))
    check_loss(sigmoid_focal_loss, FocalLoss, y, pred, function_axis=-1, **kwargs)


def test_errors():
    with pytest.raises(ValueError, match="`mode` must be one of .*Received: mode='eiou'"):
        box_iou_loss(np.zeros((1, 4)), np.zeros((1, 4)), mode="eiou")
    with pytest.raises(ValueError, match="same shape"):
        box_iou_loss(np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"`alpha` must be None or in \[0, 1\]. Received: alpha=1.5"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="`gamma` must be a number >= 0. Received: gamma=-1"):
        sigmoid_focal_loss([1.0], [0.5], gamma=-1)
    with pytest.raises(ValueError, match="`beta` must be a number >= 0. Received: beta=-0.1"):
        SmoothL1Loss(beta=-0.1)


@pytest.mark.parametrize("fn", [sigmoid_focal_loss, smooth_l1_loss, box_iou_loss])
def test_mismatched_shapes_name_both(fn):
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 4\), y_pred.shape=\(3, 4\)"):
        fn(np.zeros((2, 4), np.float32), np.full((3, 4), 0.5, np.float32))
