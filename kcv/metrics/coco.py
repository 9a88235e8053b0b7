"""COCO box mAP through pycocotools: a Keras metric and an evaluator for files on disk.

The numbers are pycocotools' own (`COCOeval(..., "bbox")`: `evaluate`, `accumulate`,
`summarize`); kcv only converts the data and handles the cases pycocotools does not:
- no detections at all (`COCO.loadRes([])` raises): every number is 0;
- boxes: kcv's `[y1, x1, y2, x2]` pixels become COCO's `[x, y, width, height]`;
- classes: contiguous `0..C-1` become category ids (`c + 1` inside the metric; the file's ids
  with `coco_evaluate`), and image ids are counted per image seen;
- more than `max_detections` detections of an image: only the best-scoring `max_detections`
  of the image (over all classes, the COCO challenge rule) are evaluated (pycocotools itself
  would keep `max_detections` per image *and class*);
- small/medium/large come from the ground truth's `area` (inside the metric: the box area in
  the pixels of the model's input; with `coco_evaluate`: the file's `area`, the segment area).

Reference:
    Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; pycocotools,
    https://github.com/cocodataset/cocoapi.
"""

import contextlib
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_PREDICTION_KEYS = ("boxes", "scores", "classes", "num_detections")


def _check_max_detections(max_detections):
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) \
            or max_detections < 10:
        raise ValueError(f"`max_detections` must be an int >= 10 (COCO evaluates at 1, 10 and "
                         f"max_detections). Received: max_detections={max_detections!r}")


def _top_per_image(results, max_detections):
    """The `max_detections` best-scoring results of each image (stable for equal scores)."""
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    kept = []
    for dets in by_image.values():
        kept.extend(sorted(dets, key=lambda r: -r["score"])[:max_detections])
    return kept


def _evaluate(coco_gt, results, max_detections, category_ids=None, image_ids=None):
    """pycocotools' 12 box numbers of `results` (COCO result dicts) against `coco_gt`."""
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    results = _top_per_image(results, max_detections)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        if category_ids is not None:
            evaluator.params.catIds = list(category_ids)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        # summarize() looks up its AP line at maxDets == 100 by value; the accumulated
        # arrays are indexed by position, so name the last position 100 for the summary.
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}


def _coco_from_dict(dataset):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(annotations_json, detections, max_detections=100, image_ids=None):
    """COCO box mAP of detections against a COCO instances file, by pycocotools.

    Args:
        annotations_json: path of the ground-truth COCO instances file (or its loaded dict).
        detections: COCO results: a list of `{"image_id", "category_id", "bbox" [x, y, w, h],
            "score"}` dicts (e.g. from `kcv.data.detections_to_coco`) or the path of a JSON
            file holding one.
        max_detections: detections kept per image (the best-scoring; COCO uses 100).
        image_ids: evaluate only these images (default: every image of the file).

    Returns:
        dict of the 12 COCO numbers `AP` (IoU .50:.95), `AP50`, `AP75`, `APs`, `APm`, `APl`,
        `AR1`, `AR10`, `AR100` (at `max_detections`), `ARs`, `ARm`, `ARl`; -1 where
        pycocotools has nothing to average (e.g. no large objects); all 0 without detections.

    Raises:
        ValueError: a missing file, or detections naming an image or category id that the
            annotations do not have.

    Example:
        >>> import json, kcv
        >>> _ = kcv.data.write_coco_json("shapes.json", "shapes",
        ...                              kcv.data.make_shapes_detection(2, 64), ["a", "b", "c"])
        >>> with open("shapes.json") as f:
        ...     truth = json.load(f)["annotations"]
        >>> perfect = [{"image_id": a["image_id"], "category_id": a["category_id"],
        ...             "bbox": a["bbox"], "score": 1.0} for a in truth]
        >>> coco_evaluate("shapes.json", perfect)["AP"]
        1.0
    """
    _check_max_detections(max_detections)
    if isinstance(annotations_json, dict):
        coco_gt = _coco_from_dict(annotations_json)
        where = "the annotations"
    else:
        if not isinstance(annotations_json, (str, os.PathLike)) or \
                not os.path.isfile(annotations_json):
            raise ValueError(f"`annotations_json` must be an existing file or a dict. Received: "
                             f"annotations_json={annotations_json!r}")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(annotations_json))
        where = str(annotations_json)
    if isinstance(detections, (str, os.PathLike)):
        with open(detections, encoding="utf-8") as f:
            detections = json.load(f)
    if not isinstance(detections, list):
        raise ValueError(f"`detections` must be a list of COCO result dicts or a JSON file of "
                         f"one. Received: {type(detections).__name__}")
    detections = [dict(d) for d in detections]  # loadRes writes into them
    unknown_images = sorted({d["image_id"] for d in detections} - set(coco_gt.getImgIds()))
    if unknown_images:
        raise ValueError(f"`detections` name image ids {unknown_images[:10]} that {where} does "
                         "not have.")
    unknown = sorted({d["category_id"] for d in detections} - set(coco_gt.getCatIds()))
    if unknown:
        raise ValueError(f"`detections` name category ids {unknown[:10]} that {where} does "
                         "not have.")
    return _evaluate(coco_gt, detections, max_detections, image_ids=image_ids)


@keras.saving.register_keras_serializable(package="kcv")
class COCOMeanAveragePrecision(keras.metrics.Metric):
    """COCO box mAP (pycocotools) over everything seen, as a Keras metric.

    `update_state(y_true, y_pred)` takes kcv's detection targets
    `{"boxes": [B, M, 4], "classes": [B, M]}` (`[y1, x1, y2, x2]` pixels, padded with class
    -1) and a detector's padded output `{"boxes": [B, D, 4], "scores": [B, D],
    "classes": [B, D], "num_detections": [B]}` in the same pixels. It stores them in NumPy
    (eagerly, or through `tf.py_function` inside a `tf.function`, so it works in
    `model.evaluate`; not under XLA: compile with `jit_compile=False`). `result()` runs
    pycocotools on all stored images and returns the dict of the 12 COCO numbers (see
    `coco_evaluate`). Inside a compiled step `result()` does not evaluate (that takes the
    whole set, at every step); it returns the values of the last eager `result()`. Keras
    computes the logs that `evaluate` (and `fit`'s validation) returns eagerly after the last
    batch, so those are the full evaluation.

    Keras routes `compile(metrics=...)` per output, so a detector whose output is a dict
    updates this metric with the whole dicts in its `compute_metrics` (see
    docs/detection.md).

    Args:
        class_ids: evaluate only these contiguous classes (default: every class seen).
        max_detections: detections kept per image (the best-scoring); COCO uses 100.
        name: metric name.
        dtype: dtype of the results.

    Example:
        >>> import numpy as np
        >>> m = COCOMeanAveragePrecision()
        >>> y_true = {"boxes": np.array([[[10., 10., 50., 60.]]]), "classes": np.array([[0]])}
        >>> y_pred = {"boxes": np.array([[[10., 10., 50., 60.]]]), "scores": np.array([[0.9]]),
        ...           "classes": np.array([[0]]), "num_detections": np.array([1])}
        >>> m.update_state(y_true, y_pred)
        >>> float(m.result()["AP"])
        1.0
    """

    def __init__(self, class_ids=None, max_detections=100, name="coco_map", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if class_ids is not None:
            class_ids = list(class_ids)
            if not class_ids or any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                                    or c < 0 for c in class_ids):
                raise ValueError(f"`class_ids` must be non-negative class indices. Received: "
                                 f"class_ids={class_ids!r}")
            class_ids = [int(c) for c in class_ids]
        _check_max_detections(max_detections)
        self.class_ids = class_ids
        self.max_detections = max_detections
        self._reset()

    def _reset(self):
        self._images = []
        self._gt = []
        self._results = []
        self._last = dict.fromkeys(METRIC_NAMES, 0.0)

    def reset_state(self):
        self._reset()

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("`sample_weight` is not supported by COCOMeanAveragePrecision.")
        if not isinstance(y_true, dict) or {"boxes", "classes"} - set(y_true):
            raise ValueError("`y_true` must be a dict with 'boxes' and 'classes'. Received: "
                             f"{sorted(y_true) if isinstance(y_true, dict) else type(y_true)}")
        if not isinstance(y_pred, dict) or set(_PREDICTION_KEYS) - set(y_pred):
            raise ValueError(f"`y_pred` must be a dict with {list(_PREDICTION_KEYS)}. Received: "
                             f"{sorted(y_pred) if isinstance(y_pred, dict) else type(y_pred)}")
        tensors = [y_true["boxes"], y_true["classes"]] + [y_pred[k] for k in _PREDICTION_KEYS]
        if tf.executing_eagerly():
            self._store(*(np.asarray(t) for t in tensors))
        else:
            tensors = [tf.cast(t, tf.float32) for t in tensors]
            tf.py_function(lambda *ts: self._store(*(t.numpy() for t in ts)) or [], tensors,
                           Tout=[])

    def _store(self, gt_boxes, gt_classes, boxes, scores, classes, counts):
        for b in range(len(gt_boxes)):
            image_id = len(self._images) + 1
            self._images.append({"id": image_id})
            valid = gt_classes[b] >= 0
            for (y1, x1, y2, x2), cls in zip(gt_boxes[b][valid].astype(float),
                                             gt_classes[b][valid]):
                w, h = x2 - x1, y2 - y1
                self._gt.append({"id": len(self._gt) + 1, "image_id": image_id,
                                 "category_id": int(cls) + 1, "bbox": [x1, y1, w, h],
                                 "area": w * h, "iscrowd": 0})
            n = int(counts[b])
            for (y1, x1, y2, x2), score, cls in zip(boxes[b, :n].astype(float),
                                                    scores[b, :n], classes[b, :n]):
                self._results.append({"image_id": image_id, "category_id": int(cls) + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "score": float(score)})

    def _compute(self):
        seen = {a["category_id"] for a in self._gt} | {r["category_id"] for r in self._results}
        if self.class_ids is not None:
            seen |= {c + 1 for c in self.class_ids}
        coco_gt = _coco_from_dict({"images": list(self._images), "annotations": list(self._gt),
                                   "categories": [{"id": c} for c in sorted(seen)]})
        category_ids = None if self.class_ids is None else [c + 1 for c in self.class_ids]
        self._last = _evaluate(coco_gt, [dict(r) for r in self._results], self.max_detections,
                               category_ids)
        return self._last

    def result(self):
        dtype = self.dtype or "float32"
        if tf.executing_eagerly():
            values = self._compute()
            return {k: tf.constant(values[k], dtype) for k in METRIC_NAMES}
        out = tf.py_function(lambda: [np.float32(self._last[k]) for k in METRIC_NAMES], [],
                             Tout=[tf.float32] * len(METRIC_NAMES))
        return {k: tf.ensure_shape(tf.cast(v, dtype), ()) for k, v in zip(METRIC_NAMES, out)}

    def get_config(self):
        return {**super().get_config(), "class_ids": self.class_ids,
                "max_detections": self.max_detections}
