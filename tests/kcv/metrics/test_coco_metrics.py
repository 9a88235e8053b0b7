import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import kcv
from kcv.metrics import COCOMeanAveragePrecision, coco_evaluate

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _pycocotools(gt_dict, results):
    """The 12 numbers straight from pycocotools (the outside reference)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_dict))
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(KEYS, ev.stats))


def _gt_dict(per_image, num_classes=3):
    """COCO GT from per-image lists of (class, [x, y, w, h]); category id = class + 1."""
    anns = [{"id": len([0 for j in range(i) for _ in per_image[j]]) + k + 1, "image_id": i + 1,
             "category_id": c + 1, "bbox": list(map(float, b)), "area": float(b[2] * b[3]),
             "iscrowd": 0}
            for i, objs in enumerate(per_image) for k, (c, b) in enumerate(objs)]
    return {"images": [{"id": i + 1, "height": 200, "width": 200} for i in range(len(per_image))],
            "annotations": anns, "categories": [{"id": c + 1} for c in range(num_classes)]}


def _results(per_image):
    """COCO results from per-image lists of (class, [x, y, w, h], score)."""
    return [{"image_id": i + 1, "category_id": c + 1, "bbox": list(map(float, b)),
             "score": float(s)} for i, dets in enumerate(per_image) for c, b, s in dets]


def _yxyx(b):
    x, y, w, h = b
    return [y, x, y + h, x + w]


def _y_true(per_image, m=8):
    boxes = np.zeros((len(per_image), m, 4), np.float32)
    classes = np.full((len(per_image), m), -1, np.int32)
    for i, objs in enumerate(per_image):
        for k, (c, b) in enumerate(objs):
            boxes[i, k], classes[i, k] = _yxyx(b), c
    return {"boxes": boxes, "classes": classes}


def _y_pred(per_image, d=None):
    d = d or max(1, max(len(x) for x in per_image))
    out = {"boxes": np.zeros((len(per_image), d, 4), np.float32),
           "scores": np.zeros((len(per_image), d), np.float32),
           "classes": np.zeros((len(per_image), d), np.int32),
           "num_detections": np.zeros((len(per_image),), np.int32)}
    for i, dets in enumerate(per_image):
        for k, (c, b, s) in enumerate(dets):
            out["boxes"][i, k], out["scores"][i, k], out["classes"][i, k] = _yxyx(b), s, c
        out["num_detections"][i] = len(dets)
    return out


GT = [[(0, [10, 10, 20, 20]), (1, [50, 60, 40, 30]), (2, [0, 100, 150, 90])],   # small/med/large
      [(0, [30, 30, 50, 50]), (0, [120, 120, 40, 40])],
      [(1, [5, 5, 25, 60])]]
DETS = [[(0, [11, 10, 20, 21], 0.9), (1, [50, 60, 40, 30], 0.8), (2, [10, 110, 140, 80], 0.7),
         (0, [150, 150, 20, 20], 0.95)],                        # a confident false positive
        [(0, [32, 28, 50, 50], 0.6), (1, [120, 120, 40, 40], 0.5)],   # right box, wrong class
        [(1, [5, 5, 25, 45], 0.4)]]


def _metric_values(metric):
    return {k: float(v) for k, v in metric.result().items()}


def _assert_metric_gives(expected, gt, dets):
    m = COCOMeanAveragePrecision()
    m.update_state(_y_true(gt), _y_pred(dets))
    values = _metric_values(m)
    for k in KEYS:
        assert values[k] == pytest.approx(expected[k], abs=1e-6), k


def test_perfect_detections_give_one():
    dets = [[(c, b, 0.9) for c, b in objs] for objs in GT]
    m = COCOMeanAveragePrecision()
    m.update_state(_y_true(GT), _y_pred(dets))
    values = _metric_values(m)
    assert sorted(values) == sorted(KEYS)
    for k in KEYS:
        if k != "AR1":
            assert values[k] == pytest.approx(1.0), k
    # AR1: one detection per image and class; image 2 holds two class-0 objects, so class 0
    # recalls 2 of 3, classes 1 and 2 all: (2/3 + 1 + 1) / 3.
    assert values["AR1"] == pytest.approx((2 / 3 + 2) / 3)


def test_matches_pycocotools_on_a_mixed_case():
    expected = _pycocotools(_gt_dict(GT), _results(DETS))
    assert 0.1 < expected["AP"] < 0.9  # a case with something to get wrong
    m = COCOMeanAveragePrecision()
    m.update_state(_y_true(GT[:2]), _y_pred(DETS[:2], d=5))  # two batches, padded outputs
    m.update_state(_y_true(GT[2:]), _y_pred(DETS[2:], d=5))
    values = _metric_values(m)
    for k in KEYS:
        assert values[k] == pytest.approx(expected[k], abs=1e-6), k


def test_zero_detections_give_zero_where_pycocotools_crashes():
    gt = COCO()
    gt.dataset = _gt_dict(GT)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        with pytest.raises(IndexError):
            gt.loadRes([])
    m = COCOMeanAveragePrecision()
    m.update_state(_y_true(GT), _y_pred([[] for _ in GT]))
    assert _metric_values(m) == dict.fromkeys(KEYS, 0.0)


def test_more_than_max_detections_per_image_keeps_the_best_scoring():
    # image 1: its true positive (class 0, score 0.1) is pushed out by 120 confident class-1
    # false positives; image 2: found. pycocotools alone keeps 100 per image *and class*.
    gt = [[(0, [10, 10, 30, 30])], [(0, [40, 40, 30, 30]), (1, [100, 100, 20, 20])]]
    fps = [(1, [150 - k % 50, 150, 10, 10], 0.9 - k * 1e-4) for k in range(120)]
    dets = [[(0, [10, 10, 30, 30], 0.1)] + fps, [(0, [40, 40, 30, 30], 0.8)]]
    raw = _pycocotools(_gt_dict(gt), _results(dets))
    kept = _pycocotools(_gt_dict(gt), _results([fps[:100], dets[1]]))
    assert raw["AR100"] != pytest.approx(kept["AR100"])
    _assert_metric_gives(kept, gt, dets)


def test_contiguous_classes_are_categories():
    # Right boxes with the classes shifted by one: nothing matches.
    shifted = [[((c + 1) % 3, b, 0.9) for c, b in objs] for objs in GT]
    m = COCOMeanAveragePrecision()
    m.update_state(_y_true(GT), _y_pred(shifted))
    assert _metric_values(m)["AP"] == 0.0
    # class_ids restricts the categories evaluated (as pycocotools' params.catIds)
    dets = [[(c, b, 0.9) for c, b in objs if c == 0] for objs in GT]
    only0 = COCOMeanAveragePrecision(class_ids=[0])
    only0.update_state(_y_true(GT), _y_pred(dets))
    assert _metric_values(only0)["AP"] == pytest.approx(1.0)


def test_area_ranges_come_from_the_ground_truth_area():
    # a 20 x 20 object (small, < 32^2) found, a 50 x 50 one (medium) missed, none large
    gt = [[(0, [10, 10, 20, 20]), (0, [100, 100, 50, 50])]]
    dets = [[(0, [10, 10, 20, 20], 0.9)]]
    expected = _pycocotools(_gt_dict(gt), _results(dets))
    assert [expected["APs"], expected["APm"], expected["APl"]] == pytest.approx([1, 0, -1])
    _assert_metric_gives(expected, gt, dets)


def test_update_inside_tf_function_and_reset():
    expected = _pycocotools(_gt_dict(GT), _results(DETS))
    m = COCOMeanAveragePrecision()
    y_true = tf.nest.map_structure(tf.constant, _y_true(GT))
    y_pred = tf.nest.map_structure(tf.constant, _y_pred(DETS))
    tf.function(m.update_state)(y_true, y_pred)
    assert _metric_values(m)["AP"] == pytest.approx(expected["AP"], abs=1e-6)
    m.reset_state()
    assert _metric_values(m) == dict.fromkeys(KEYS, 0.0)


class _FakeDetector(keras.Model):
    """Returns stored detections for the image index it is given; routes the whole target and
    prediction dicts to its COCO metric."""

    def __init__(self, predictions):
        super().__init__(name="fake_detector")
        self.table = {k: tf.constant(v) for k, v in predictions.items()}
        self.coco = COCOMeanAveragePrecision()
        self.scale = keras.layers.Dense(1)  # something to compile

    def call(self, x):
        index = tf.cast(x[:, 0], tf.int32)
        out = {k: tf.gather(v, index) for k, v in self.table.items()}
        out["scores"] = out["scores"] + 0.0 * self.scale(x)  # keep the layer in the graph
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.constant(0.0)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.coco.update_state(y, y_pred)
        return self.get_metrics_result()


def test_model_evaluate_gives_pycocotools_numbers():
    expected = _pycocotools(_gt_dict(GT), _results(DETS))
    model = _FakeDetector(_y_pred(DETS))
    model.compile(jit_compile=False)
    x = np.arange(len(GT), dtype=np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((x, _y_true(GT))).batch(2)
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    for k in KEYS:
        assert logs[k] == pytest.approx(expected[k], abs=1e-6), k
    again = model.evaluate(ds, return_dict=True, verbose=0)  # reset between runs
    assert again["AP"] == pytest.approx(expected["AP"], abs=1e-6)


def test_config_round_trip_and_bad_arguments():
    m = COCOMeanAveragePrecision(class_ids=[0, 2], max_detections=300, name="map")
    again = COCOMeanAveragePrecision.from_config(m.get_config())
    assert (again.class_ids, again.max_detections, again.name) == ([0, 2], 300, "map")
    with pytest.raises(ValueError, match="max_detections"):
        COCOMeanAveragePrecision(max_detections=0)
    with pytest.raises(ValueError, match="class_ids"):
        COCOMeanAveragePrecision(class_ids=[-1])
    with pytest.raises(ValueError, match="y_pred"):
        m.update_state(_y_true(GT), {"boxes": np.zeros((3, 1, 4))})
    with pytest.raises(ValueError, match="y_true"):
        m.update_state({"boxes": np.zeros((3, 1, 4))}, _y_pred(DETS))
    with pytest.raises(ValueError, match="sample_weight"):
        m.update_state(_y_true(GT), _y_pred(DETS), sample_weight=np.ones(3))


def test_coco_evaluate_on_files(tmp_path):
    gt_dict = _gt_dict(GT)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    (tmp_path / "dt.json").write_text(json.dumps(_results(DETS)))
    expected = _pycocotools(gt_dict, _results(DETS))
    for stats in (coco_evaluate(str(tmp_path / "gt.json"), str(tmp_path / "dt.json")),
                  coco_evaluate(gt_dict, _results(DETS))):
        for k in KEYS:
            assert stats[k] == pytest.approx(expected[k], abs=1e-6), k
    assert coco_evaluate(str(tmp_path / "gt.json"), []) == dict.fromkeys(KEYS, 0.0)
    bad_image = [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(ValueError, match="image ids \\[99\\]"):
        coco_evaluate(str(tmp_path / "gt.json"), bad_image)
    bad_category = [{"image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(ValueError, match="category ids \\[42\\]"):
        coco_evaluate(str(tmp_path / "gt.json"), bad_category)
    with pytest.raises(ValueError, match="annotations_json"):
        coco_evaluate(str(tmp_path / "none.json"), [])


def test_synthetic_through_the_real_data_path_scores_one(tmp_path):
    # shapes -> COCO files -> coco_detection (torchvision resize) -> ground truth as predictions
    # -> detections_to_coco (back to original pixels and ids) -> coco_evaluate
    data = kcv.data.make_shapes_detection(4, 64, seed=3, max_boxes=8)
    cats = kcv.data.write_coco_json(str(tmp_path / "s.json"), str(tmp_path / "s"), data,
                                    ["ellipse", "rectangle", "triangle"], category_ids=[2, 5, 9])
    ds = kcv.data.coco_detection(str(tmp_path / "s.json"), str(tmp_path / "s"), batch_size=2,
                                 min_size=100, max_size=150, shuffle=False, max_boxes=8,
                                 include_info=True)
    results = []
    for _, t in ds:
        valid = t["classes"] >= 0
        predictions = {"boxes": t["boxes"], "scores": tf.cast(valid, tf.float32),
                       "classes": tf.maximum(t["classes"], 0),
                       "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), 1)}
        results += kcv.data.detections_to_coco(predictions, t, cats)
    assert {r["category_id"] for r in results} <= {2, 5, 9}
    stats = coco_evaluate(str(tmp_path / "s.json"), results)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR100"] == pytest.approx(1.0)
