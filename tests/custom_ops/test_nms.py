"""The NMS family against NumPy greedy references and TensorFlow's kernels."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import custom_ops
import export


def np_iou(a, b):
    a = [min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])]
    b = [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def np_diou(a, b):
    ch = max(a[2], b[2]) - min(a[0], b[0])
    cw = max(a[3], b[3]) - min(a[1], b[1])
    rho2 = ((a[0] + a[2] - b[0] - b[2]) / 2) ** 2 + ((a[1] + a[3] - b[1] - b[3]) / 2) ** 2
    diag = ch**2 + cw**2
    return np_iou(a, b) - (rho2 / diag if diag > 0 else 0.0)


def np_greedy(boxes, scores, thr, score_thr=-np.inf, overlap=np_iou, classes=None):
    """Textbook greedy NMS; returns (kept indices, owner of every box)."""
    order = sorted((i for i in range(len(scores)) if scores[i] > score_thr),
                   key=lambda i: (-scores[i], i))
    keep, owner = [], {}
    for i in order:
        for k in keep:
            same = classes is None or classes[i] == classes[k]
            if same and overlap(boxes[k], boxes[i]) > thr:
                owner[i] = k
                break
        else:
            keep.append(i)
            owner[i] = i
    return keep, owner


def np_soft(boxes, scores, sigma, method, nt, score_thr):
    """Bodla et al., Algorithm 1 (Gaussian: exp(-iou^2 / sigma); linear: 1 - iou if iou >= Nt)."""
    s = np.array(scores, np.float64)
    alive = list(range(len(s)))
    out, out_s = [], []
    while alive:
        m = max(alive, key=lambda i: (s[i], -i))
        if s[m] <= score_thr:
            break
        out.append(m)
        out_s.append(s[m])
        alive.remove(m)
        for i in alive:
            iou = np_iou(boxes[m], boxes[i])
            s[i] *= math.exp(-iou * iou / sigma) if method == "gaussian" else (1 - iou if iou >= nt else 1)
        alive = [i for i in alive if s[i] > score_thr]
    return out, np.array(out_s)


def random_problem(n, seed=0, max_side=300.0, grid=False):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 1000, (n, 2))
    side = rng.uniform(10, max_side, (n, 2))
    if grid:  # integer coordinates: many exact ties in IoU and scores
        centre, side = np.round(centre / 50) * 50, np.round(side / 50) * 50 + 50
    boxes = np.concatenate([centre - side / 2, centre + side / 2], 1).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    if grid:
        scores = np.round(scores * 10) / 10
    return boxes, scores


@pytest.mark.parametrize("n,seed,thr", [(40, 0, 0.5), (300, 1, 0.3), (1100, 2, 0.7), (200, 3, 0.0),
                                        (150, 4, 1.0)])
def test_nms_matches_tf_image_and_numpy(n, seed, thr):
    boxes, scores = random_problem(n, seed)
    expected = tf.image.non_max_suppression(boxes, scores, n, thr).numpy()
    got = custom_ops.nms(boxes, scores, thr).numpy()
    np.testing.assert_array_equal(got, expected)
    if n <= 300:
        np.testing.assert_array_equal(got, np_greedy(boxes, scores, thr)[0])


def test_nms_ties_take_lower_index_first():
    boxes, scores = random_problem(120, 5, grid=True)
    np.testing.assert_array_equal(custom_ops.nms(boxes, scores, 0.5).numpy(),
                                  np_greedy(boxes, scores, 0.5)[0])


def test_iou_exactly_at_threshold_is_kept():
    boxes = np.array([[0, 0, 1, 2], [0, 0, 1, 1]], np.float32)  # IoU exactly 1/2
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(custom_ops.nms(boxes, scores, 0.5).numpy(), [0, 1])
    np.testing.assert_array_equal(custom_ops.nms(boxes, scores, 0.49).numpy(), [0])


def test_score_threshold_and_max_output_size_padded():
    boxes, scores = random_problem(200, 6)
    expected = tf.image.non_max_suppression(boxes, scores, 15, 0.5, score_threshold=0.4).numpy()
    idx, num = custom_ops.nms(boxes, scores, 0.5, 0.4, max_output_size=15,
                              pad_to_max_output_size=True)
    assert idx.shape == (15,) and int(num) == len(expected) == 15
    np.testing.assert_array_equal(idx.numpy(), expected)
    idx, num = custom_ops.nms(boxes[:3], scores[:3], 0.5, max_output_size=6,
                              pad_to_max_output_size=True)
    n = int(num)
    np.testing.assert_array_equal(idx.numpy()[n:], np.zeros(6 - n))


def test_batched_input_padded():
    probs = [random_problem(80, s) for s in (7, 8)]
    boxes = np.stack([p[0] for p in probs])
    scores = np.stack([p[1] for p in probs])
    idx, num = custom_ops.nms(boxes, scores, 0.5, max_output_size=30, pad_to_max_output_size=True)
    for b, (bx, sc) in enumerate(probs):
        expected = np_greedy(bx, sc, 0.5)[0][:30]
        assert int(num[b]) == len(expected)
        np.testing.assert_array_equal(idx.numpy()[b, : len(expected)], expected)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single(n):
    boxes, scores = random_problem(n, 9)
    assert custom_ops.nms(boxes, scores).numpy().tolist() == list(range(n))
    idx, num = custom_ops.nms(boxes, scores, max_output_size=4, pad_to_max_output_size=True)
    assert idx.numpy().tolist() == [0, 0, 0, 0] and int(num) == n
    soft_idx, soft_s = custom_ops.soft_nms(boxes, scores)
    assert soft_idx.shape == (n,) and soft_s.shape == (n,)


def test_all_scores_under_threshold():
    boxes, scores = random_problem(50, 10)
    assert custom_ops.nms(boxes, scores, score_threshold=2.0).shape == (0,)
    idx, num = custom_ops.soft_nms(boxes, scores, score_threshold=2.0, max_output_size=5,
                                   pad_to_max_output_size=True)[::2]
    assert int(num) == 0


def test_zero_area_boxes_never_suppress():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(custom_ops.nms(boxes, scores, 0.0).numpy(), [0, 1, 2])
    np.testing.assert_array_equal(tf.image.non_max_suppression(boxes, scores, 3, 0.0).numpy(),
                                  [0, 1, 2])


def test_boxes_given_as_xyxy_or_flipped_give_the_same_answer():
    boxes, scores = random_problem(150, 11)
    expected = custom_ops.nms(boxes, scores, 0.5).numpy()
    np.testing.assert_array_equal(expected, np_greedy(boxes, scores, 0.5)[0])
    xyxy = boxes[:, [1, 0, 3, 2]]  # transposed: IoU unchanged
    np.testing.assert_array_equal(custom_ops.nms(xyxy, scores, 0.5).numpy(), expected)
    flipped = boxes[:, [2, 3, 0, 1]]  # x2 < x1 and y2 < y1: corners are sorted first
    np.testing.assert_array_equal(custom_ops.nms(flipped, scores, 0.5).numpy(), expected)


def test_nan_scores_are_dropped_not_an_error():
    boxes, scores = random_problem(60, 12)
    scores[[3, 10, 20]] = np.nan
    got = custom_ops.nms(boxes, scores, 0.5).numpy()
    clean = np.where(np.isnan(scores), -np.inf, scores)
    np.testing.assert_array_equal(got, np_greedy(boxes, clean, 0.5)[0])
    assert not {3, 10, 20} & set(got.tolist())
    soft_idx, _ = custom_ops.soft_nms(boxes, scores)
    assert not {3, 10, 20} & set(soft_idx.numpy().tolist())


def test_batched_nms_is_class_aware():
    boxes, scores = random_problem(250, 13)
    classes = np.random.default_rng(13).integers(0, 4, 250).astype(np.int32)
    expected = np_greedy(boxes, scores, 0.5, classes=classes)[0]
    np.testing.assert_array_equal(custom_ops.batched_nms(boxes, scores, classes, 0.5).numpy(),
                                  expected)


def test_diou_nms_matches_numpy():
    boxes, scores = random_problem(250, 14)
    expected = np_greedy(boxes, scores, 0.4, overlap=np_diou)[0]
    np.testing.assert_array_equal(custom_ops.diou_nms(boxes, scores, 0.4).numpy(), expected)
    assert len(expected) > len(np_greedy(boxes, scores, 0.4)[0])  # the penalty keeps more


def _np_weighted(boxes, scores, thr):
    keep, owner = np_greedy(boxes, scores, thr)
    averaged = []
    for k in keep:
        members = [i for i, o in owner.items() if o == k]
        w = scores[members].astype(np.float64)
        averaged.append((boxes[members] * w[:, None]).sum(0) / w.sum())
    return keep, np.array(averaged).reshape(-1, 4)


def test_weighted_nms_matches_numpy():
    boxes, scores = random_problem(250, 15)
    keep, expected = _np_weighted(boxes, scores, 0.5)
    idx, avg = custom_ops.weighted_nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(idx.numpy(), keep)
    np.testing.assert_allclose(avg.numpy(), expected, rtol=1e-5, atol=1e-3)
    assert np.abs(expected - boxes[keep]).max() > 1.0  # averaging happened


def test_soft_nms_gaussian_matches_tf_and_numpy():
    boxes, scores = random_problem(150, 16)
    ref_idx, ref_s = tf.image.non_max_suppression_with_scores(
        boxes, scores, 150, iou_threshold=1.0, score_threshold=1e-3, soft_nms_sigma=0.25)
    idx, s = custom_ops.soft_nms(boxes, scores, sigma=0.5)
    np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
    np.testing.assert_allclose(s.numpy(), ref_s.numpy(), rtol=1e-5)
    np_idx, np_s = np_soft(boxes, scores, 0.5, "gaussian", 0.3, 1e-3)
    np.testing.assert_array_equal(idx.numpy(), np_idx)
    np.testing.assert_allclose(s.numpy(), np_s, rtol=1e-5)


def test_soft_nms_linear_matches_numpy():
    boxes, scores = random_problem(150, 17)
    np_idx, np_s = np_soft(boxes, scores, 0.5, "linear", 0.3, 1e-3)
    idx, s, num = custom_ops.soft_nms(boxes, scores, method="linear", iou_threshold=0.3,
                                      max_output_size=150, pad_to_max_output_size=True)
    assert int(num) == len(np_idx)
    np.testing.assert_array_equal(idx.numpy()[: len(np_idx)], np_idx)
    np.testing.assert_allclose(s.numpy()[: len(np_idx)], np_s, rtol=1e-5)


@pytest.mark.parametrize("method,case", [("gaussian", "grid"), ("linear", "tied_scores"),
                                         ("gaussian", "negative"), ("linear", "negative")])
def test_soft_nms_ties_and_negative_scores_match_numpy(method, case):
    """Several boxes are selected per loop step: exact tie order and negative scores (whose
    decay raises them towards 0) must still give Bodla's one-at-a-time answer. (Linear decay on
    the integer grid is left out: there float32 and the float64 reference round differently
    into exact ties: a decayed score may equal another score in float32 only.)"""
    if case == "grid":
        boxes, scores = random_problem(120, 23, grid=True)
        thr = 1e-3
    elif case == "tied_scores":
        boxes, scores = random_problem(120, 25)
        scores = np.round(scores * 10) / 10
        thr = 1e-3
    else:
        boxes, scores = random_problem(120, 24)
        scores = scores * 2.0 - 1.0
        thr = -0.6
    np_idx, np_s = np_soft(boxes, scores, 0.5, method, 0.3, thr)
    idx, s = custom_ops.soft_nms(boxes, scores, sigma=0.5, method=method, iou_threshold=0.3,
                                 score_threshold=thr)
    np.testing.assert_array_equal(idx.numpy(), np_idx)
    np.testing.assert_allclose(s.numpy(), np_s, rtol=1e-5)


@pytest.mark.parametrize("method,second", [("linear", -0.1), ("gaussian", -0.5 * math.exp(-1.28))])
def test_soft_nms_decayed_negative_score_overtakes(method, second):
    """Hand case: box 2 (score -0.5, IoU 0.8 with box 0) decays towards 0 after box 0 is taken
    (linear: -0.5 * (1 - 0.8); Gaussian: -0.5 * exp(-0.8^2 / 0.5)) and overtakes box 1 (-0.3),
    which does not overlap box 0. Order [0, 2, 1]."""
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 8]], np.float32)
    scores = np.array([0.9, -0.3, -0.5], np.float32)
    idx, s = custom_ops.soft_nms(boxes, scores, sigma=0.5, method=method, iou_threshold=0.3,
                                 score_threshold=-1.0)
    np.testing.assert_array_equal(idx.numpy(), [0, 2, 1])
    np.testing.assert_allclose(s.numpy(), [0.9, second, -0.3], rtol=1e-5)


@pytest.mark.slow
def test_xla_padded_matches_eager():
    boxes, scores = random_problem(600, 18)
    expected = np_greedy(boxes, scores, 0.5)[0][:100]

    @tf.function(jit_compile=True)
    def run(b, s):
        return (custom_ops.nms(b, s, 0.5, max_output_size=100, pad_to_max_output_size=True),
                custom_ops.soft_nms(b, s, max_output_size=50, pad_to_max_output_size=True))

    (idx, num), (sidx, ss, snum) = run(boxes, scores)
    assert int(num) == len(expected)
    np.testing.assert_array_equal(idx.numpy()[: len(expected)], expected)
    eager = custom_ops.soft_nms(boxes, scores, max_output_size=50)
    np.testing.assert_array_equal(sidx.numpy()[: int(snum)], eager[0].numpy())


class _NMSProbe(keras.layers.Layer):
    """Test-only wrapper: hard and soft NMS, padded, inside a Keras model for conversion."""

    def call(self, inputs):
        boxes, scores = inputs
        idx, num = custom_ops.nms(boxes, scores, 0.5, max_output_size=20,
                                  pad_to_max_output_size=True)
        sidx, ss, snum = custom_ops.soft_nms(boxes, scores, max_output_size=20,
                                             pad_to_max_output_size=True)
        return idx, num, sidx, ss, snum


def _litert_outputs(probe, seeds, atol=1e-5):
    """Converts a probe model (64 boxes, batch 2) with builtins only; LiteRT equals Keras.

    Returns the problems, the op names and the LiteRT outputs."""
    probs = [random_problem(64, s) for s in seeds]
    boxes = np.stack([p[0] for p in probs])
    scores = np.stack([p[1] for p in probs])
    b_in, s_in = keras.Input((64, 4)), keras.Input((64,))
    model = keras.Model([b_in, s_in], probe([b_in, s_in]))
    expected = [np.asarray(o) for o in model([boxes, scores])]
    content = export.convert_to_tflite(model, batch_size=2)
    ops = export.tflite_ops(content)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    got = export.run_tflite(content, [boxes, scores], input_names=export.input_names(model),
                            output_names=export.output_names(model))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=atol)
    return probs, ops, got


@pytest.mark.slow
def test_tflite_builtins_only_and_litert_parity():
    probs, ops, got = _litert_outputs(_NMSProbe(), (19, 20))
    assert "WHILE" in ops
    for b, (bx, sc) in enumerate(probs):  # and both are right
        keep = np_greedy(bx, sc, 0.5)[0][:20]
        np.testing.assert_array_equal(got[0][b, : len(keep)], keep)


@pytest.mark.slow
def test_compiled_core_converts_from_concrete_function():
    """Outside XLA and outside a SavedModel export, the loop runs as an inner XLA program; the
    TFLite converter inlines it (builtins only) and LiteRT gives the NumPy greedy answer."""
    boxes, scores = random_problem(64, 22)

    @tf.function(input_signature=[tf.TensorSpec([64, 4]), tf.TensorSpec([64])])
    def run(b, s):
        idx, num = custom_ops.nms(b, s, 0.5, max_output_size=20, pad_to_max_output_size=True)
        sidx, ss, snum = custom_ops.soft_nms(b, s, max_output_size=20, pad_to_max_output_size=True)
        return idx, num, sidx, ss, snum

    graph = run.get_concrete_function().graph.as_graph_def()
    assert any(f.attr["_XlaMustCompile"].b for f in graph.library.function)  # compiled path
    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()], run)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    ops = export.tflite_ops(content)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), (boxes, scores)):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    got = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    for e, g in zip(run(boxes, scores), got):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5)
    keep = np_greedy(boxes, scores, 0.5)[0][:20]
    np.testing.assert_array_equal(got[0][: len(keep)], keep)
    np_idx = np_soft(boxes, scores, 0.5, "gaussian", 0.3, 1e-3)[0][:20]
    np.testing.assert_array_equal(got[2][: len(np_idx)], np_idx)


def test_errors():
    boxes, scores = random_problem(5, 21)
    with pytest.raises(ValueError, match=r"`iou_threshold` must be in \[0.0, 1.0\]. Received: iou_threshold=1.5"):
        custom_ops.nms(boxes, scores, 1.5)
    with pytest.raises(ValueError, match=r"`boxes` must have shape \[N, 4\].*Received: boxes.shape=\(5, 3\)"):
        custom_ops.nms(boxes[:, :3], scores)
    with pytest.raises(ValueError, match=r"`scores` must have shape \(5,\).*Received"):
        custom_ops.nms(boxes, scores[:4])
    with pytest.raises(ValueError, match="needs `max_output_size`"):
        custom_ops.nms(boxes, scores, pad_to_max_output_size=True)
    with pytest.raises(ValueError, match="`max_output_size` must be >= 0"):
        custom_ops.nms(boxes, scores, max_output_size=-1)
    with pytest.raises(ValueError, match="`method` must be 'gaussian' or 'linear'. Received: method='hard'"):
        custom_ops.soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="`sigma` must be > 0"):
        custom_ops.soft_nms(boxes, scores, sigma=0.0)
    with pytest.raises(ValueError, match="`classes` must have shape"):
        custom_ops.batched_nms(boxes, scores, np.zeros(4, np.int32))



@pytest.mark.parametrize("family", ["nms", "batched_nms", "diou_nms", "weighted_nms", "soft_nms"])
def test_tensor_valued_iou_threshold_and_max_output_size(family):
    """Thresholds and limits given as tensors (eagerly and as tf.function arguments) give the
    answers of the Python numbers; out-of-range tensors fail at run time, naming the argument."""
    boxes, scores = random_problem(120, 26)
    classes = np.random.default_rng(26).integers(0, 3, 120).astype(np.int32)
    thr, limit = 0.4, 7
    if family == "soft_nms":
        want = np_soft(boxes, scores, 0.5, "linear", thr, 1e-3)[0][:limit]
    elif family == "diou_nms":
        want = np_greedy(boxes, scores, thr, overlap=np_diou)[0][:limit]
    else:
        want = np_greedy(boxes, scores, thr, classes=classes if family == "batched_nms"
                         else None)[0][:limit]

    def run(iou_threshold, max_output_size):
        extra = {"classes": classes} if family == "batched_nms" else {}
        if family == "soft_nms":
            extra = {"method": "linear"}
        out = getattr(custom_ops, family)(boxes, scores, iou_threshold=iou_threshold,
                                          max_output_size=max_output_size, **extra)
        return out[0] if isinstance(out, tuple) else out

    for fn in (run, tf.function(run)):
        got = fn(tf.constant(thr), tf.constant(limit))
        np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`iou_threshold` must be <= 1.0"):
        run(tf.constant(1.5), None)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`max_output_size` must be >= 0"):
        run(tf.constant(thr), tf.constant(-1))
    with pytest.raises(ValueError, match=r"`iou_threshold` must be a scalar.*\(2,\)"):
        run(tf.constant([0.4, 0.5]), None)


def test_tensor_max_output_size_cannot_fix_a_padded_size():
    boxes, scores = random_problem(10, 27)
    with pytest.raises(ValueError, match=r"must be a Python int. Received: max_output_size=<tf"):
        custom_ops.nms(boxes, scores, max_output_size=tf.constant(4), pad_to_max_output_size=True)


@pytest.mark.slow
def test_padded_weighted_and_diou_nms_under_xla_match_numpy():
    boxes, scores = random_problem(300, 28)
    keep, averaged = _np_weighted(boxes, scores, 0.5)
    diou_keep = np_greedy(boxes, scores, 0.4, overlap=np_diou)[0][:60]

    @tf.function(jit_compile=True)
    def run(b, s):
        return (custom_ops.weighted_nms(b, s, 0.5, max_output_size=60,
                                        pad_to_max_output_size=True),
                custom_ops.diou_nms(b, s, 0.4, max_output_size=60, pad_to_max_output_size=True))

    (idx, avg, num), (didx, dnum) = run(boxes, scores)
    n = min(len(keep), 60)
    assert int(num) == n and int(dnum) == len(diou_keep)
    np.testing.assert_array_equal(idx.numpy()[:n], keep[:n])
    np.testing.assert_allclose(avg.numpy()[:n], averaged[:n], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(avg.numpy()[n:], 0.0)
    np.testing.assert_array_equal(didx.numpy()[: len(diou_keep)], diou_keep)


class _WeightedDiouProbe(keras.layers.Layer):
    """Test-only wrapper: padded weighted and DIoU NMS inside a Keras model for conversion."""

    def call(self, inputs):
        boxes, scores = inputs
        idx, avg, num = custom_ops.weighted_nms(boxes, scores, 0.5, max_output_size=20,
                                                pad_to_max_output_size=True)
        didx, dnum = custom_ops.diou_nms(boxes, scores, 0.4, max_output_size=20,
                                         pad_to_max_output_size=True)
        return idx, avg, num, didx, dnum


@pytest.mark.slow
def test_padded_weighted_and_diou_nms_tflite_builtins_only_and_litert_parity():
    probs, _, got = _litert_outputs(_WeightedDiouProbe(), (29, 30), atol=1e-4)
    for b, (bx, sc) in enumerate(probs):  # and LiteRT gives the NumPy answers
        keep, averaged = _np_weighted(bx, sc, 0.5)
        n = min(len(keep), 20)
        assert int(got[2][b]) == n
        np.testing.assert_array_equal(got[0][b, :n], keep[:n])
        np.testing.assert_allclose(got[1][b, :n], averaged[:n], rtol=1e-5, atol=1e-3)
        diou_keep = np_greedy(bx, sc, 0.4, overlap=np_diou)[0][:20]
        np.testing.assert_array_equal(got[3][b, : len(diou_keep)], diou_keep)
