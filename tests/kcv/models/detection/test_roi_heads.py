"""RoI head: targets, losses and detections vs NumPy transcriptions of torchvision's RoIHeads."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from custom_ops.roi_align import multiscale_roi_align
from kcv.models.detection import (
    BalancedPositiveNegativeSampler,
    RoIBoxHead,
    postprocess_detections,
    roi_loss,
    roi_targets,
)

from kcv_testing import check_layer

sys.path.insert(0, os.path.dirname(__file__))
from _numpy_detection import np_decode, np_nms  # noqa: E402


def _iou(a, b):
    inter = (np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
             * np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])))
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def test_roi_targets_vs_torchvision_rules():
    rng = np.random.default_rng(0)
    gt = np.array([[[10, 10, 30, 40], [50, 5, 70, 25], [0, 0, 0, 0]],
                   [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    gt_classes = np.array([[1, 0, -1], [-1, -1, -1]], np.int32)
    props = np.zeros((2, 40, 4), np.float32)
    centres = rng.uniform(10, 60, size=(2, 40, 2))
    sizes = rng.uniform(8, 30, size=(2, 40, 2))
    props[:] = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
    props[0, :6] = gt[0, 0] + rng.uniform(-2, 2, size=(6, 4))  # a few near-duplicates: objects
    num = np.array([30, 25])
    sampler = BalancedPositiveNegativeSampler(64, 0.25)  # 16 objects at most, 64 in all
    rois, labels, targets = roi_targets(props, num, gt, gt_classes, [4, 2], sampler=sampler)
    rois, labels, targets = rois.numpy(), labels.numpy(), targets.numpy()
    for b in range(2):
        valid_gt = gt[b][gt_classes[b] >= 0]
        cand = np.concatenate([props[b, : num[b]], valid_gt])  # GT boxes appended
        if len(valid_gt):
            q = _iou(valid_gt, cand)
            best, arg = q.max(0), q.argmax(0)
            ref_labels = np.where(best >= 0.5, gt_classes[b][arg] + 1, 0)
        else:
            ref_labels, arg = np.zeros(len(cand), int), np.zeros(len(cand), int)
        taken = labels[b] >= 0
        n_pos = min((ref_labels > 0).sum(), 16)
        assert (labels[b] > 0).sum() == n_pos
        assert taken.sum() == min(len(cand), n_pos + min((ref_labels == 0).sum(), 64 - n_pos))
        for roi, lab, tgt in zip(rois[b][taken], labels[b][taken], targets[b][taken]):
            i = np.nonzero(np.all(np.abs(cand - roi) < 1e-6, axis=1))[0][0]
            assert lab == ref_labels[i]
            if lab > 0:  # targets of the matched GT, weights (10, 10, 5, 5)
                np.testing.assert_allclose(np_decode(tgt, roi, (10, 10, 5, 5)), valid_gt[arg[i]],
                                           atol=1e-3)
            else:
                assert not tgt.any()
        assert not rois[b][~taken].any() and not targets[b][~taken].any()
    assert (labels[1] == 0).sum() == 25  # no GT: every proposal is background


def test_roi_loss_vs_numpy():
    rng = np.random.default_rng(1)
    labels = rng.choice([-1, 0, 1, 2, 3], size=(2, 10)).astype(np.int32)
    logits = rng.normal(size=(2, 10, 4)).astype(np.float32)
    deltas = rng.normal(size=(2, 10, 4, 4)).astype(np.float32)
    targets = np.where(labels[..., None] > 0, rng.normal(size=(2, 10, 4)), 0).astype(np.float32)
    cls, box = roi_loss(logits, deltas, labels, targets)
    valid = labels >= 0
    x = logits.astype(np.float64)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0]
    own = np.take_along_axis(deltas, np.maximum(labels, 0)[..., None, None], 2)[:, :, 0]
    diff = np.abs(own - targets).astype(np.float64)
    l1 = np.where(diff < 1 / 9, 4.5 * diff**2, diff - 0.5 / 9).sum(-1)
    np.testing.assert_allclose(float(cls), ce[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(box), l1[labels > 0].sum() / valid.sum(), rtol=1e-5)


def _np_postprocess(logits, deltas, rois, n, hw, score_thr, nms_thr, det, min_size):
    """torchvision postprocess_detections for one image (class ids returned without background)."""
    x = logits[:n].astype(np.float64)
    scores = np.exp(x - x.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    boxes = np_decode(deltas[:n], rois[:n, None], (10, 10, 5, 5))
    boxes = np.clip(boxes, 0, [hw[0], hw[1], hw[0], hw[1]])
    c = logits.shape[-1]
    labels = np.broadcast_to(np.arange(c), scores.shape)
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = np.nonzero(scores > score_thr)[0]
    keep = keep[(boxes[keep, 2] - boxes[keep, 0] >= min_size) & (boxes[keep, 3] - boxes[keep, 1] >= min_size)]
    keep = keep[np_nms(boxes[keep], scores[keep], labels[keep], nms_thr)][:det]
    return boxes[keep], scores[keep], labels[keep] - 1


@pytest.mark.parametrize("det", [100, 4])
def test_postprocess_vs_torchvision_rules(det):
    rng = np.random.default_rng(2)
    b, r, c = 2, 12, 4  # 3 classes + background
    centres = rng.uniform(5, 35, size=(b, 3, 1, 2)) + rng.normal(scale=1.5, size=(b, 3, 4, 2))
    centres = centres.reshape(b, r, 2)
    rois = np.concatenate([centres - 6, centres + 6], -1).astype(np.float32)  # clusters overlap
    logits = rng.normal(scale=2, size=(b, r, c)).astype(np.float32)
    deltas = rng.normal(scale=0.5, size=(b, r, c, 4)).astype(np.float32)
    deltas[0, 0, 1, 2] = -40.0  # a collapsed box: dropped by min_size
    num = np.array([12, 9])
    out = postprocess_detections(logits, deltas, rois, num, (40, 36), detections_per_image=det)
    for i in range(b):
        ref_b, ref_s, ref_c = _np_postprocess(logits[i], deltas[i], rois[i], num[i], (40, 36),
                                              0.05, 0.5, det, 1e-2)
        k = int(out["num_detections"][i])
        assert k == len(ref_b) and k > 3
        np.testing.assert_allclose(out["boxes"][i, :k].numpy(), ref_b, atol=1e-4)
        np.testing.assert_allclose(out["scores"][i, :k].numpy(), ref_s, atol=1e-6)
        np.testing.assert_array_equal(out["classes"][i, :k].numpy(), ref_c)
        assert not out["boxes"][i, k:].numpy().any() and not out["scores"][i, k:].numpy().any()


def test_roi_box_head_vs_numpy():
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(2, 16, 16, 3)).astype(np.float32),
            rng.normal(size=(2, 8, 8, 3)).astype(np.float32)]
    rois = np.array([[[0, 0, 20, 30], [10, 10, 60, 60]], [[5, 5, 9, 12], [0, 0, 64, 64]]],
                    np.float32)
    head = RoIBoxHead(2, representation_size=8, output_size=3, spatial_scales=(1 / 4, 1 / 8))
    logits, deltas = head([*maps, rois])
    pooled = multiscale_roi_align(maps, rois.reshape(-1, 4), [0, 0, 1, 1], 3, [1 / 4, 1 / 8], 2,
                                  aligned=False).numpy().reshape(4, -1)
    w = [(layer.kernel.numpy(), layer.bias.numpy())
         for layer in (head.fc6, head.fc7, head.cls_score, head.bbox_pred)]
    h = np.maximum(np.maximum(pooled @ w[0][0] + w[0][1], 0) @ w[1][0] + w[1][1], 0)
    np.testing.assert_allclose(logits.numpy().reshape(4, 3), h @ w[2][0] + w[2][1], atol=1e-5)
    np.testing.assert_allclose(deltas.numpy().reshape(4, 12), h @ w[3][0] + w[3][1], atol=1e-5)


@pytest.mark.slow
def test_roi_box_head_layer_checks():
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    rois = np.array([[[0, 0, 20, 30], [4, 4, 12, 16]], [[5, 5, 9, 12], [0, 0, 32, 32]]],
                    np.float32)
    check_layer(RoIBoxHead(2, representation_size=8, output_size=3, spatial_scales=(1 / 4,)),
                [maps, rois])


def test_errors():
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer. Received: num_classes=0"):
        RoIBoxHead(0)
    with pytest.raises(ValueError, match=r"RoIBoxHead expects \[4 feature maps, rois\]"):
        RoIBoxHead(2)([tf.zeros([1, 8, 8, 3]), tf.zeros([1, 2, 4])])
    with pytest.raises(ValueError, match="`detections_per_image` must be a positive int"):
        postprocess_detections(np.zeros((1, 1, 2)), np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 4)),
                               [1], (8, 8), detections_per_image=0)


def test_roi_loss_giou_by_hand():
    # RoI [0, 0, 10, 10] (yxyx), weights (10, 10, 5, 5):
    # 1. deltas (0, 0, 0, 5 ln 2) widen it to x in [-5, 15]; the GT [0, 0, 10, 20]:
    #    both 10 x 20, intersection 10 x 15 = 150, union 200 + 200 - 150 = 250, IoU 0.6; the
    #    enclosing box [0, -5, 10, 20] has area 250 = the union: GIoU 0.6, loss 0.4.
    # 2. zero deltas, GT [0, 20, 10, 30] (disjoint): IoU 0, enclosing 10 x 30 = 300, union
    #    200: GIoU = -100 / 300, loss 4 / 3.
    # 3. a background RoI and 4. an empty slot (-1): no box loss; 3 valid RoIs.
    roi = [0.0, 0.0, 10.0, 10.0]
    rois = np.array([[roi, roi, roi, [0.0, 0.0, 0.0, 0.0]]], np.float32)
    gt = np.array([[0, 0, 10, 20], [0, 20, 10, 30]], np.float64)
    labels = np.array([[1, 1, 0, -1]], np.int32)
    # targets as roi_targets encodes them: ((cy, cx) offsets / size, log size ratios) x weights
    targets = np.zeros((1, 4, 4), np.float32)
    for i, (y1, x1, y2, x2) in enumerate(gt):
        h, w = y2 - y1, x2 - x1
        targets[0, i] = [10 * ((y1 + y2) / 2 - 5) / 10, 10 * ((x1 + x2) / 2 - 5) / 10,
                         5 * np.log(h / 10), 5 * np.log(w / 10)]
    deltas = np.zeros((1, 4, 2, 4), np.float32)
    deltas[0, 0, 1] = [0, 0, 0, 5 * np.log(2)]
    deltas[0, 2, 1] = [3, 3, 3, 3]  # the background RoI's class-1 deltas do not count
    logits = np.zeros((1, 4, 2), np.float32)
    cls, box = roi_loss(logits, deltas, labels, targets, box_loss="giou", rois=rois)
    np.testing.assert_allclose(float(box), (0.4 + 4 / 3) / 3, rtol=1e-5)
    np.testing.assert_allclose(float(cls), np.log(2), rtol=1e-5)
    # the default smooth L1 on the same inputs is another number
    _, l1 = roi_loss(logits, deltas, labels, targets, rois=rois)
    assert abs(float(l1) - float(box)) > 0.1
    # finite gradients (the empty slot's zero RoI is replaced by a unit box)
    d = tf.Variable(deltas)
    with tf.GradientTape() as tape:
        _, box = roi_loss(logits, d, labels, targets, box_loss="giou", rois=rois)
    grad = tape.gradient(box, d).numpy()
    assert np.isfinite(grad).all() and not grad[0, 2:].any() and grad[0, 0, 1].any()


def test_roi_box_head_roi_pool_vs_numpy():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    rois = np.array([[[0, 0, 63, 63], [16, 8, 40, 60]], [[5, 5, 30, 20], [0, 0, 16, 16]]],
                    np.float32)
    head = RoIBoxHead(2, representation_size=8, output_size=2, spatial_scales=(1 / 16,),
                      pooler="roi_pool")
    logits, _ = head([features, rois])
    # Fast R-CNN RoIPool (torchvision's rule): round the box corners at 1/16, split the
    # (end - start + 1) cells into 2 x 2 bins [floor(i * s), ceil((i + 1) * s)), max per bin.
    pooled = []
    for b in range(2):
        for y1, x1, y2, x2 in rois[b] / 16:
            sy, sx, ey, ex = (int(np.floor(v + 0.5)) for v in (y1, x1, y2, x2))
            bh, bw = (ey - sy + 1) / 2, (ex - sx + 1) / 2
            cells = [features[b, min(sy + int(np.floor(p * bh)), 4):min(sy + int(np.ceil((p + 1) * bh)), 4),
                              min(sx + int(np.floor(q * bw)), 4):min(sx + int(np.ceil((q + 1) * bw)), 4)]
                     .max(axis=(0, 1)) for p in range(2) for q in range(2)]
            pooled.append(np.stack(cells).reshape(-1))
    w = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in (head.fc6, head.fc7, head.cls_score)]
    h = np.maximum(np.maximum(np.stack(pooled) @ w[0][0] + w[0][1], 0) @ w[1][0] + w[1][1], 0)
    np.testing.assert_allclose(logits.numpy().reshape(4, 3), h @ w[2][0] + w[2][1], atol=1e-5)
    assert RoIBoxHead.from_config(head.get_config()).pooler == "roi_pool"


def test_option_errors():
    with pytest.raises(ValueError, match="`pooler` must be one of.*pooler='max'"):
        RoIBoxHead(2, pooler="max")
    with pytest.raises(ValueError, match="needs one entry. Received: spatial_scales"):
        RoIBoxHead(2, pooler="roi_pool")
    args = (np.zeros((1, 1, 2)), np.zeros((1, 1, 2, 4)), [[1]], np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="`box_loss` must be one of.*box_loss='l2'"):
        roi_loss(*args, box_loss="l2")
    with pytest.raises(ValueError, match="pass `rois`. Received: rois=None"):
        roi_loss(*args, box_loss="giou")
