"""Cascade R-CNN: stage re-matching and score averaging on hand-computed cases, training, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.models.detection import BalancedPositiveNegativeSampler, FasterRCNN, Matcher, roi_targets
from kcv.models.detection.cascade import (
    CascadeRoIHeads,
    next_stage_candidates,
    refine_boxes,
)
from kcv.models.detection.roi_heads import select_detections

from kcv_testing import tiny_faster_rcnn as _model

GT = tf.constant([[[0.0, 0.0, 10.0, 10.0]]])  # one object of class 1 (label 2)
# Stage-1 RoIs: the appended GT, boxes at IoU 0.8, 0.65, 0.55, 0.3 with it, a box that the
# stage collapses (zero height after clipping), an empty slot.
ROIS = [[[0.0, 0.0, 10.0, 10.0], [0.0, 2.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.5],
         [0.0, 0.0, 10.0, 5.5], [0.0, 0.0, 10.0, 3.0], [-8.0, 0.0, -2.0, 6.0], [0.0] * 4]]
LABELS = [[2, 2, 2, 2, 0, 0, -1]]


def test_refine_boxes_by_hand():
    deltas = np.zeros((1, 7, 1, 4), np.float32)
    deltas[0, 1, 0] = [2.0, 0.0, 0.0, 10 * np.log(2.0)]  # dy 2/20 of h=10: +1; width x2 about cx=6
    refined = refine_boxes(deltas, ROIS, (20, 20, 10, 10), (64, 12)).numpy()[0]
    np.testing.assert_allclose(refined[1], [1.0, 0.0, 11.0, 12.0], atol=1e-5)  # x 2..10 -> -2..14
    np.testing.assert_allclose(refined[5], [0.0, 0.0, 0.0, 6.0])  # y -8..-2 clipped to 0..0
    np.testing.assert_allclose(refined[[0, 2, 3, 4, 6]], np.asarray(ROIS[0])[[0, 2, 3, 4, 6]])


@pytest.mark.parametrize("threshold, labels", [
    (0.5, [2, 2, 2, 0, 2]),  # IoU 0.8, 0.65, 0.55 objects, 0.3 background, the GT appended
    (0.6, [2, 2, 0, 0, 2]),
    (0.7, [2, 0, 0, 0, 2]),
])
def test_stage_rematching_hand_computed(threshold, labels):
    refined = refine_boxes(np.zeros((1, 7, 1, 4), np.float32), ROIS, (10, 10, 5, 5), (64, 64))
    candidates, num = next_stage_candidates(ROIS, tf.constant(LABELS), refined, GT, [[1]])
    assert int(num[0]) == 4  # the GT slot, the collapsed box and the empty slot are left out
    np.testing.assert_allclose(candidates[0, :4].numpy(), np.asarray(ROIS[0][1:5]))
    assert not candidates[0, 4:].numpy().any()
    rois, got, targets = roi_targets(
        candidates, num, GT, tf.constant([[1]]), [0, 0], matcher=Matcher(threshold, threshold),
        sampler=BalancedPositiveNegativeSampler(8, 1.0), weights=(20, 20, 10, 10))
    np.testing.assert_array_equal(got.numpy()[0], labels + [-1, -1, -1])
    np.testing.assert_allclose(rois[0, :5].numpy(), np.asarray(ROIS[0][1:5] + ROIS[0][:1]))
    # [0, 2, 10, 10] -> GT: dx = 20 * (5 - 6) / 8, dw = 10 * log(10 / 8)
    np.testing.assert_allclose(targets[0, 0].numpy(), [0.0, -2.5, 0.0, 10 * np.log(1.25)],
                               atol=1e-5)
    for i, label in enumerate(labels):
        if label == 0:
            assert not targets[0, i].numpy().any()


def test_score_averaging_hand_computed():
    heads = CascadeRoIHeads(2, representation_size=4, output_size=2, spatial_scales=(1 / 4,))
    maps = tf.random.normal([1, 8, 8, 3], seed=1)
    rois = tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0] * 4]])
    heads([maps, rois], image_shape=(16, 16))
    # With zero MLP weights each stage outputs its biases, whatever it pools.
    logits = [[0.0, 0.0, 0.0], [np.log(2.0), 0.0, np.log(2.0)], [0.0, np.log(3.0), 0.0]]
    deltas = [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 15 * np.log(2.0), 0.0]]
    for stage, z, d in zip(heads.stages, logits, deltas):
        for layer in (stage.fc6, stage.fc7, stage.cls_score, stage.bbox_pred):
            layer.kernel.assign(tf.zeros_like(layer.kernel))
        stage.cls_score.bias.assign(z)
        stage.bbox_pred.bias.assign(d)
    scores, boxes = heads([maps, rois], image_shape=(16, 16))
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [0.4, 0.2, 0.4], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(scores[0].numpy(), [probs.mean(0)] * 2, atol=1e-6)
    # stage 1: cy 5 + 0.2 * 10 -> [2, 0, 12, 10]; stage 2 keeps it; stage 3 doubles the
    # height about cy 7 -> [-3, 0, 17, 10], clipped to the 16x16 image.
    np.testing.assert_allclose(boxes[0, 0].numpy(), [0.0, 0.0, 16.0, 10.0], atol=1e-5)
    out = select_detections(scores[..., 1:], boxes[:, :, None], tf.constant([1]), (16, 16),
                            detections_per_image=4)
    assert int(out["num_detections"][0]) == 2  # one RoI, both classes, boxes shared
    np.testing.assert_array_equal(out["classes"][0, :2].numpy(), [0, 1])
    np.testing.assert_allclose(out["scores"][0, :2].numpy(), probs.mean(0)[[1, 2]], atol=1e-6)


def _cascade(**kwargs):
    return _model(cascade_iou_thresholds=(0.5, 0.6, 0.7), **kwargs)


def test_cascade_train_steps_reduce_loss():
    # Eager `train_step` calls: `fit` would first spend a minute tracing the whole graph.
    images, targets = kcv.data.make_shapes_detection(4, image_size=64, seed=0, max_boxes=8)
    model = _cascade()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=5.0))
    history = []
    for _ in range(4):
        for metric in model.metrics:
            metric.reset_state()
        history.append({k: float(v) for k, v in model.train_step((images, targets)).items()})
    stages = {f"{n}_stage{t}" for n in ("classifier", "box_reg") for t in (1, 2, 3)}
    assert set(history[0]) == {"loss", "rpn_objectness", "rpn_box", "classifier",
                               "box_reg"} | stages
    for name in ("loss", "classifier", "classifier_stage1", "classifier_stage3"):
        assert history[-1][name] < 0.8 * history[0][name], (name, history)
    for step in history:  # the total is the four terms; the classifier the weighted stages
        np.testing.assert_allclose(step["loss"], sum(step[n] for n in (
            "rpn_objectness", "rpn_box", "classifier", "box_reg")), rtol=1e-5)
        for name in ("classifier", "box_reg"):
            np.testing.assert_allclose(step[name], sum(
                w * step[f"{name}_stage{t}"] for t, w in zip((1, 2, 3), (1.0, 0.5, 0.25))),
                rtol=1e-5)


def test_cascade_keras_reload_safe_mode(tmp_path):
    # In this process (`kcv_testing.check_keras_reload`'s fresh process takes over a minute).
    images, _ = kcv.data.make_shapes_detection(1, image_size=64, seed=3, max_boxes=8)
    model = _cascade()
    want = model(images)
    model.save(tmp_path / "cascade.keras")
    loaded = keras.saving.load_model(tmp_path / "cascade.keras", safe_mode=True)
    assert isinstance(loaded.box_head, CascadeRoIHeads)
    got = loaded(images)
    assert int(want["num_detections"][0]) > 0
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=key)


def test_cascade_config_and_errors():
    model = FasterRCNN(2, backbone="resnet18", input_shape=(64, 64, 3), fpn_filters=8,
                       representation_size=16, cascade_iou_thresholds=[0.5, 0.6, 0.7])
    config = model.get_config()
    assert config["cascade_iou_thresholds"] == (0.5, 0.6, 0.7)
    again = FasterRCNN.from_config(config)
    assert again.get_config() == config
    assert isinstance(again.box_head, CascadeRoIHeads)
    assert FasterRCNN(2, backbone="resnet18").get_config()["cascade_iou_thresholds"] is None
    heads = CascadeRoIHeads(3, (0.5, 0.7), box_weights=((10, 10, 5, 5), (20, 20, 10, 10)),
                            stage_loss_weights=(1.0, 0.5), representation_size=8)
    assert CascadeRoIHeads.from_config(heads.get_config()).get_config() == heads.get_config()
    with pytest.raises(ValueError, match=r"`box_weights` needs one entry per stage \(2"):
        CascadeRoIHeads(3, (0.5, 0.7))
    with pytest.raises(ValueError, match=r"`iou_thresholds` must be IoUs in \(0, 1\].*1.5"):
        CascadeRoIHeads(3, (0.5, 0.6, 1.5))
    with pytest.raises(TypeError, match="`iou_thresholds` must be a sequence. Received: "
                                        "iou_thresholds=0.5"):
        CascadeRoIHeads(3, 0.5)
