"""RPN head, proposals, targets and loss vs NumPy transcriptions of torchvision's rules."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import export
from kcv.models.detection import (
    BalancedPositiveNegativeSampler,
    RPNHead,
    generate_proposals,
    rpn_loss,
    rpn_targets,
)

from kcv_testing import check_layer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "layers"))
from _numpy_conv import conv2d  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _numpy_detection import np_decode, np_nms  # noqa: E402


def test_rpn_head_vs_numpy_conv():
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(2, 6, 5, 4)).astype(np.float32),
             rng.normal(size=(2, 3, 3, 4)).astype(np.float32)]
    head = RPNHead(3)
    logits, deltas = head(feats)
    conv, cls, box = head.convs[0], head.cls_logits, head.bbox_pred
    for f, lg, d in zip(feats, logits, deltas):  # shared weights, flattened (y, x, anchor)
        t = np.maximum(conv2d(f, conv.kernel.numpy(), bias=conv.bias.numpy()), 0)
        ref_lg = conv2d(t, cls.kernel.numpy(), bias=cls.bias.numpy()).reshape(2, -1)
        ref_d = conv2d(t, box.kernel.numpy(), bias=box.bias.numpy()).reshape(2, -1, 4)
        np.testing.assert_allclose(lg.numpy(), ref_lg, atol=1e-6)
        np.testing.assert_allclose(d.numpy(), ref_d, atol=1e-6)
    kernel = box.kernel.numpy()
    assert 0.005 < kernel.std() < 0.015 and not np.any(box.bias.numpy())  # torchvision's init


@pytest.mark.slow
def test_rpn_head_layer_checks():
    feats = np.random.default_rng(1).normal(size=(2, 6, 5, 4)).astype(np.float32)
    check_layer(RPNHead(3, conv_depth=2), feats)


def _np_proposals(logits, deltas, anchors, hw, pre, post, thr, min_size):
    """torchvision filter_proposals for one image (levels as lists), with kcv's delta order."""
    boxes, scores, levels = [], [], []
    for lv, (lg, d, a) in enumerate(zip(logits, deltas, anchors)):
        top = np.argsort(-lg, kind="stable")[:pre]
        b = np.clip(np_decode(d[top], a[top]), 0, [hw[0], hw[1], hw[0], hw[1]])
        boxes.append(b)
        scores.append(1 / (1 + np.exp(-lg[top].astype(np.float64))))
        levels.append(np.full(len(top), lv))
    boxes, scores, levels = map(np.concatenate, (boxes, scores, levels))
    big = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    idx = np.nonzero(big)[0]
    keep = idx[np_nms(boxes[idx], scores[idx], levels[idx], thr)][:post]
    return boxes[keep], scores[keep]


def _problem(seed):
    rng = np.random.default_rng(seed)
    anchors, logits, deltas = [], [], []
    for n, size in ((60, 8.0), (20, 16.0)):
        c = rng.uniform(0, 40, size=(n, 2))
        s = size * rng.uniform(0.7, 1.4, size=(n, 2))
        anchors.append(np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32))
        logits.append(rng.normal(size=(2, n)).astype(np.float32))
        d = rng.normal(scale=0.3, size=(2, n, 4)).astype(np.float32)
        d[0, :3, 2] = -12.0  # three collapsed boxes: dropped by min_size
        deltas.append(d)
    return logits, deltas, anchors


@pytest.mark.parametrize("pre, post", [(1000, 1000), (15, 12)])
def test_proposals_match_torchvision_rules(pre, post):
    logits, deltas, anchors = _problem(1)
    sizes = np.array([[40, 36], [32, 40]], np.int32)  # per-image sizes before padding
    boxes, scores, num = generate_proposals(logits, deltas, anchors, sizes, pre, post, 0.5, 1e-3)
    assert boxes.shape == (2, post, 4)
    for b in range(2):
        ref_b, ref_s = _np_proposals([x[b] for x in logits], [x[b] for x in deltas], anchors,
                                     sizes[b], pre, post, 0.5, 1e-3)
        assert int(num[b]) == len(ref_b)
        np.testing.assert_allclose(boxes[b, : len(ref_b)].numpy(), ref_b, atol=1e-4)
        np.testing.assert_allclose(scores[b, : len(ref_s)].numpy(), ref_s, atol=1e-6)
        assert not np.any(boxes[b, len(ref_b):].numpy()) and not np.any(scores[b, len(ref_b):])


@pytest.mark.slow
def test_proposals_xla_and_tflite_builtins():
    logits, deltas, anchors = _problem(2)

    @tf.function(input_signature=[tf.TensorSpec([2, 60]), tf.TensorSpec([2, 20]),
                                  tf.TensorSpec([2, 60, 4]), tf.TensorSpec([2, 20, 4])])
    def run(l0, l1, d0, d1):
        return generate_proposals([l0, l1], [d0, d1], anchors, (40, 40), 30, 25)

    expected = [x.numpy() for x in run(*logits, *deltas)]
    xla = tf.function(run.python_function, jit_compile=True)(*logits, *deltas)
    for e, g in zip(expected, xla):
        np.testing.assert_allclose(g.numpy(), e, atol=1e-5)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()], run)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    assert not [op for op in export.tflite_ops(content) if op.startswith("Flex") or op == "CUSTOM"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    details = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
    for detail, value in zip(details, (*logits, *deltas)):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    got = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()),
                 key=lambda x: x.ndim, reverse=True)
    for e, g in zip(sorted(expected, key=lambda x: x.ndim, reverse=True), got):
        np.testing.assert_allclose(g, e, atol=1e-4)


def test_rpn_targets_by_hand():
    anchors = np.array([[0, 0, 10, 10],     # IoU 0.5 with GT 0: between -> -1
                        [0, 0, 10, 20],     # IoU 1 with GT 0 -> positive
                        [20, 20, 30, 30],   # IoU 0.25 with GT 1 (its best) -> positive
                        [50, 50, 60, 60],   # no overlap -> background
                        [20, 20, 25, 25]], np.float32)  # IoU 0.0625 with GT 1 -> background
    gt = np.array([[[0, 0, 10, 20], [20, 20, 40, 40], [0, 0, 0, 0]]], np.float32)
    labels, targets = rpn_targets(anchors, gt, np.array([[0, 1, -1]]))
    np.testing.assert_array_equal(labels.numpy(), [[-1, 1, 1, 0, 0]])
    # anchor 2 -> GT 1: dy = (30 - 25) / 10, dh = log(20 / 10)
    np.testing.assert_allclose(targets.numpy()[0],
                               [[0, 0, 0, 0], [0, 0, 0, 0], [0.5, 0.5, np.log(2), np.log(2)],
                                [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    labels, targets = rpn_targets(anchors, np.zeros((1, 2, 4), np.float32), np.full((1, 2), -1))
    np.testing.assert_array_equal(labels.numpy(), [[0] * 5])  # no GT: all background
    assert np.isfinite(targets.numpy()).all() and not targets.numpy().any()


def test_rpn_loss_vs_numpy():
    rng = np.random.default_rng(3)
    labels = rng.choice([-1, 0, 1], size=(2, 30)).astype(np.int32)
    logits = rng.normal(size=(2, 30)).astype(np.float32)
    deltas = rng.normal(size=(2, 30, 4)).astype(np.float32)
    targets = np.where(labels[..., None] == 1, rng.normal(size=(2, 30, 4)), 0).astype(np.float32)
    sampler = BalancedPositiveNegativeSampler(100, 0.5)  # takes every labelled anchor
    obj, box = rpn_loss(logits, deltas, labels, targets, [0, 0], sampler)
    sampled = labels >= 0
    y = (labels == 1).astype(np.float64)
    x = logits.astype(np.float64)
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    diff = np.abs(deltas - targets).astype(np.float64)
    l1 = np.where(diff < 1 / 9, 0.5 * diff**2 * 9, diff - 0.5 / 9).sum(-1)
    np.testing.assert_allclose(float(obj), bce[sampled].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(box), l1[labels == 1].sum() / sampled.sum(), rtol=1e-5)
    # with the default 256 / 0.5 sampler: at most 128 positives enter the box term
    labels = np.ones((1, 400), np.int32)
    obj, box = rpn_loss(np.zeros((1, 400)), np.ones((1, 400, 4)), labels, np.zeros((1, 400, 4)),
                        [1, 1])
    np.testing.assert_allclose(float(box), 128 * 4 * (1 - 0.5 / 9) / 128, rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="`num_anchors` must be a positive int. Received: num_anchors=0"):
        RPNHead(0)
    with pytest.raises(ValueError, match="`post_nms_top_n` must be a positive int"):
        generate_proposals(np.zeros((1, 4)), np.zeros((1, 4, 4)), np.zeros((4, 4)), (8, 8),
                           post_nms_top_n=0)
    with pytest.raises(ValueError, match="one entry per level"):
        generate_proposals([np.zeros((1, 4))] * 2, [np.zeros((1, 4, 4))], [np.zeros((4, 4))] * 2,
                           (8, 8))
