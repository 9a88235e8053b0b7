"""kcv.layers.DetectionPostProcess: shared layer routine and a NumPy reference pipeline."""

import numpy as np
import pytest

from kcv.layers import DetectionPostProcess

from kcv_testing import check_layer


def _np_iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def np_post_process(deltas, logits, anchors, max_det, iou_thr, score_thr, top_k, weights,
                    activation, background=None):
    """Decode (Faster R-CNN), score, top-k over (anchor, class), class-wise greedy NMS, top max_det."""
    wy, wx, wh, ww = weights
    ah, aw = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    acy, acx = anchors[:, 0] + ah / 2, anchors[:, 1] + aw / 2
    out = []
    for d, lg in zip(deltas, logits):
        cy, cx = d[:, 0] / wy * ah + acy, d[:, 1] / wx * aw + acx
        h = np.exp(np.minimum(d[:, 2] / wh, np.log(1000 / 16))) * ah
        w = np.exp(np.minimum(d[:, 3] / ww, np.log(1000 / 16))) * aw
        boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
        if activation == "sigmoid":
            sc = 1 / (1 + np.exp(-lg.astype(np.float64)))
        else:
            e = np.exp(lg - lg.max(-1, keepdims=True))
            sc = e / e.sum(-1, keepdims=True)
        if background is not None:
            sc[:, background] = -np.inf
        cand = sorted(((sc[a, c], a * sc.shape[1] + c) for a in range(sc.shape[0])
                       for c in range(sc.shape[1])), key=lambda t: (-t[0], t[1]))[:top_k]
        kept = []
        for s, flat in cand:
            a, c = divmod(flat, sc.shape[1])
            if not s > score_thr:
                continue
            if all(kc != c or _np_iou(boxes[ka], boxes[a]) <= iou_thr for ka, kc, _ in kept):
                kept.append((a, c, s))
        kept = kept[:max_det]
        out.append(([boxes[a] for a, _, _ in kept], [s for *_, s in kept], [c for _, c, _ in kept]))
    return out


def _problem(batch=2, anchors=24, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(10, 90, (anchors, 2))
    s = rng.uniform(10, 40, (anchors, 2))
    anchor_boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
    deltas = rng.normal(0, 0.5, (batch, anchors, 4)).astype(np.float32)
    logits = rng.normal(0, 2, (batch, anchors, classes)).astype(np.float32)
    return deltas, logits, anchor_boxes


@pytest.mark.parametrize("activation,background", [("sigmoid", None), ("softmax", 0)])
def test_matches_numpy_pipeline(activation, background):
    deltas, logits, anchors = _problem(seed=1, anchors=40, classes=4)
    layer = DetectionPostProcess(max_detections=12, iou_threshold=0.4, score_threshold=0.1,
                                 pre_nms_top_k=60, box_weights=(10, 10, 5, 5),
                                 score_activation=activation, background_class=background)
    boxes, scores, classes, num = (np.asarray(o) for o in layer([deltas, logits, anchors]))
    expected = np_post_process(deltas, logits, anchors, 12, 0.4, 0.1, 60, (10, 10, 5, 5),
                               activation, background)
    for b, (eb, es, ec) in enumerate(expected):
        n = len(es)
        assert num[b] == n and n > 0
        np.testing.assert_allclose(boxes[b, :n], np.array(eb), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(scores[b, :n], es, rtol=1e-5)
        np.testing.assert_array_equal(classes[b, :n], ec)
        assert not boxes[b, n:].any() and not scores[b, n:].any() and not classes[b, n:].any()
        if background is not None:
            assert background not in classes[b, :n]


def test_shared_layer_routine():
    deltas, logits, anchors = _problem()
    anchors = np.broadcast_to(anchors, deltas.shape).copy()  # batched anchors: [B, A, 4]
    check_layer(lambda: DetectionPostProcess(max_detections=10, score_threshold=0.2,
                                             box_weights=(10, 10, 5, 5)),
                [deltas, logits, anchors])


def test_no_detection_above_threshold():
    deltas, logits, anchors = _problem(seed=3)
    boxes, scores, classes, num = DetectionPostProcess(max_detections=5)(
        [deltas, logits - 100.0, anchors])
    assert np.asarray(num).tolist() == [0, 0] and not np.asarray(boxes).any()


def test_errors():
    with pytest.raises(ValueError, match="`max_detections` must be a positive integer. Received: max_detections=0"):
        DetectionPostProcess(max_detections=0)
    with pytest.raises(ValueError, match="`score_activation` must be one of"):
        DetectionPostProcess(score_activation="relu")
    with pytest.raises(ValueError, match=r"`iou_threshold` must be in \[0, 1\]"):
        DetectionPostProcess(iou_threshold=2)
    deltas, logits, anchors = _problem()
    with pytest.raises(ValueError, match="same number of anchors"):
        DetectionPostProcess()([deltas, logits, anchors[:5]])
