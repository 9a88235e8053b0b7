"""NumPy transcriptions of the papers' loss formulas, with explicit loops over images, classes
and pixels, for the loss tests."""

import numpy as np


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _per_image_class_scores(labels, probs, score, valid=None):
    """`[B, C]` of `score(p, t)` for each image and class, with p the class probabilities and t
    the 0/1 target of the class, both zeroed where `valid` is False."""
    b, _, _, c = probs.shape
    out = np.zeros((b, c))
    for i in range(b):
        v = np.ones(labels[i].shape, bool) if valid is None else valid[i]
        for k in range(c):
            out[i, k] = score(probs[i, ..., k] * v, ((labels[i] == k) & v).astype(float))
    return out


def np_dice_per_image(labels, probs, smooth=1.0, weights=None, valid=None):
    """Soft Dice loss per image (Milletari et al. 2016), weighted mean over classes."""
    scores = _per_image_class_scores(
        labels, probs, lambda p, t: (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth),
        valid)
    w = np.ones(probs.shape[-1]) if weights is None else np.asarray(weights, float)
    return 1 - (scores * w).sum(1) / w.sum()


def np_tversky_paper(labels, probs, alpha, beta, smooth=1.0, valid=None):
    """Salehi et al. 2017, eq. (3): alpha on false positives (p0 * g1), beta on false negatives
    (p1 * g0), per image and class, 1 - mean over classes. g is "g0" in the paper: the lesion
    is class k; pixels outside `valid` count nowhere (p and g are zero there)."""
    def index(p, g):
        tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
        return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)

    return 1 - _per_image_class_scores(labels, probs, index, valid).mean(1)


def np_focal(labels, probs, gamma, alpha=None, valid=None):
    """Per image mean over pixels of -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017)."""
    b, h, w, _ = probs.shape
    out = np.zeros(b)
    for i in range(b):
        total, count = 0.0, 0
        for y in range(h):
            for x in range(w):
                if valid is not None and not valid[i, y, x]:
                    continue
                k = labels[i, y, x]
                pt = probs[i, y, x, k]
                a = 1.0 if alpha is None else alpha[k]
                total += -a * (1 - pt) ** gamma * np.log(pt)
                count += 1
        out[i] = total / count
    return out


def np_sigmoid_focal(y, x, alpha, gamma):
    """Lin et al. 2017, eq. (5), element-wise from logits."""
    p = np_sigmoid(x.astype(np.float64))
    p_t = np.where(y == 1, p, 1 - p)
    a_t = np.where(y == 1, alpha, 1 - alpha)
    return -a_t * (1 - p_t) ** gamma * np.log(p_t)
