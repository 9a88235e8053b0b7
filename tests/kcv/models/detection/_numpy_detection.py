"""NumPy references shared by the detection tests: greedy class-aware NMS and the box coder."""

import numpy as np


def np_nms(boxes, scores, classes, thr):
    """Greedy NMS (torchvision's batched_nms): by descending score, ties by index; IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if not np.isfinite(scores[i]):
            continue
        ok = True
        for j in keep:
            if classes[i] != classes[j]:
                continue
            a, b = boxes[i], boxes[j]
            inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
                     * max(0, min(a[3], b[3]) - max(a[1], b[1])))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def np_decode(deltas, ref, weights=(1, 1, 1, 1)):
    """Faster R-CNN decode of [dy, dx, dh, dw] against yxyx `ref`, log sizes clipped at log(1000/16)."""
    deltas = np.asarray(deltas, np.float64) / np.asarray(weights, np.float64)
    ref = np.asarray(ref, np.float64)
    h, w = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    cy, cx = ref[..., 0] + 0.5 * h + deltas[..., 0] * h, ref[..., 1] + 0.5 * w + deltas[..., 1] * w
    nh = np.exp(np.minimum(deltas[..., 2], np.log(1000 / 16))) * h
    nw = np.exp(np.minimum(deltas[..., 3], np.log(1000 / 16))) * w
    return np.stack([cy - nh / 2, cx - nw / 2, cy + nh / 2, cx + nw / 2], -1)
