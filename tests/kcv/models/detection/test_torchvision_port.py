"""kcv's torchvision Faster R-CNN port against torchvision's own outputs.

The numbers come from torchvision 0.29.1 itself (tools/make_torchvision_fixtures.py): a
narrow `fasterrcnn_resnet50_fpn` (every block and key of ResNet-50-FPN, narrower layers) with
random weights and FrozenBatchNorm statistics, run in float64, stage by stage.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from kcv.models.backbones.torchvision_resnet import FrozenBatchNormalization
from kcv.models.detection.torchvision_port import (
    faster_rcnn_from_torchvision,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures",
                       "torchvision_fasterrcnn_v1.npz")
CASES = ("upscale", "noresize", "downscale")


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _state_dict(data):
    return {k[3:]: v for k, v in data.items() if k.startswith("sd/")}


@pytest.fixture(scope="module")
def model64(data):
    return faster_rcnn_from_torchvision(_state_dict(data), dtype="float64", min_size=128,
                                        max_size=160)


@pytest.fixture(scope="module")
def model32(data):
    return faster_rcnn_from_torchvision(_state_dict(data), dtype="float32", min_size=128,
                                        max_size=160)


def _images(data, case):
    return data[f"{case}/images"].astype(np.float64) / 255.0


def _xyxy_to_yxyx(b):
    return np.asarray(b)[..., [1, 0, 3, 2]]


@pytest.mark.parametrize("case", CASES)
def test_transform_float64(data, model64, case):
    x, size = model64.preprocess(tf.constant(_images(data, case)))
    assert tuple(int(s) for s in size) == tuple(data[f"{case}/image_size"])
    np.testing.assert_allclose(x.numpy(), data[f"{case}/transformed"], rtol=0, atol=1e-12)


def test_backbone_and_fpn_float64(data, model64):
    x = tf.constant(data["upscale/transformed"])
    body = model64.body(x)
    for i, c in enumerate(body):
        np.testing.assert_allclose(c.numpy(), data[f"upscale/C{i + 2}"], rtol=0, atol=1e-8)
    pyramid = model64.features(x)
    assert len(pyramid) == 5
    for i, p in enumerate(pyramid):
        np.testing.assert_allclose(p.numpy(), data[f"upscale/P{i}"], rtol=0, atol=1e-8)


def _close32(actual, expected):
    """float32 against torchvision's float64: within 1e-4 of the map's largest magnitude."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_backbone_and_fpn_float32(data, model32):
    x = tf.constant(data["upscale/transformed"], tf.float32)
    for i, p in enumerate(model32.features(x)):
        _close32(p.numpy(), data[f"upscale/P{i}"])


def test_frozen_batch_norm_formula():
    """torchvision's FrozenBatchNorm2d expression, by hand, with epsilon 0 and 1e-5."""
    x = np.array([[1.0, -2.0, 3.0]])
    w, b, m, v = (np.array(a) for a in ([2.0, 0.5, 1.0], [0.1, 0.0, -1.0], [1.0, 0.0, 2.0],
                                        [4.0, 0.25, 1.0]))
    for eps in (0.0, 1e-5):
        layer = FrozenBatchNormalization(eps, dtype="float64")
        layer.build((None, 3))
        layer.set_weights([w, b, m, v])
        scale = w / np.sqrt(v + eps)
        np.testing.assert_allclose(layer(x).numpy(), x * scale + (b - m * scale), rtol=1e-15)
    assert FrozenBatchNormalization(0.0).trainable_weights == []


def _pyramid(data, case):
    return [tf.constant(data[f"{case}/P{i}"]) for i in range(5)]


def test_rpn_head_and_anchors_float64(data, model64):
    x = tf.constant(data["upscale/transformed"])
    objectness, deltas, anchors, _, _ = model64.proposals(
        x, _pyramid(data, "upscale"), tuple(data["upscale/image_size"]))
    b = x.shape[0]
    for i in range(5):
        np.testing.assert_allclose(objectness[i].numpy(),
                                   data[f"upscale/objectness_{i}"].reshape(b, -1),
                                   rtol=0, atol=1e-8)
        np.testing.assert_allclose(deltas[i].numpy(),
                                   data[f"upscale/deltas_{i}"].reshape(b, -1, 4),
                                   rtol=0, atol=1e-8)
    np.testing.assert_array_equal(np.concatenate([a.numpy() for a in anchors]),
                                  data["upscale/anchors"])


def _check_proposals(data, case, proposals, count, atol):
    for i in range(proposals.shape[0]):
        expected = data[f"{case}/proposals_{i}"]
        assert int(count[i]) == len(expected)
        np.testing.assert_allclose(proposals[i, :len(expected)].numpy(), expected, rtol=0,
                                   atol=atol)
        assert not np.any(proposals[i, len(expected):].numpy())


@pytest.mark.parametrize("case", CASES)
def test_proposals_float64(data, model64, case):
    """Same proposals in the same (score) order, within 1e-6 px."""
    x = tf.constant(data[f"{case}/transformed"])
    pyramid = model64.features(x)
    *_, proposals, count = model64.proposals(x, pyramid, tuple(data[f"{case}/image_size"]))
    _check_proposals(data, case, proposals, count, 1e-6)


def test_proposals_float32(data, model32):
    x = tf.constant(data["upscale/transformed"], tf.float32)
    pyramid = model32.features(x)
    *_, proposals, count = model32.proposals(x, pyramid, tuple(data["upscale/image_size"]))
    _check_proposals(data, "upscale", proposals, count, 1e-4 * 160)


def test_box_head_on_fixed_rois(data, model64, model32):
    """Box head logits/deltas on fixed RoIs (all four levels, a sub-pixel RoI)."""
    rois = data["upscale/fixed_rois"]
    pyramid = _pyramid(data, "upscale")
    logits, deltas = model64.box_head([p[:1] for p in pyramid], tf.constant(rois[None]))
    np.testing.assert_allclose(logits[0].numpy(), data["upscale/fixed_logits"], rtol=0,
                               atol=1e-8)
    np.testing.assert_allclose(deltas[0].numpy().reshape(len(rois), -1),
                               data["upscale/fixed_deltas"], rtol=0, atol=1e-8)
    logits32, _ = model32.box_head([tf.cast(p[:1], tf.float32) for p in pyramid],
                                   tf.constant(rois[None], tf.float32))
    _close32(logits32[0].numpy(), data["upscale/fixed_logits"])


def _check_detections(data, case, out, atol, score_atol):
    for i in range(out["boxes"].shape[0]):
        expected = data[f"{case}/det_boxes_{i}"]
        n = len(expected)
        assert int(out["num_detections"][i]) == n
        np.testing.assert_allclose(out["boxes"][i, :n].numpy(), _xyxy_to_yxyx(expected),
                                   rtol=0, atol=atol)
        np.testing.assert_allclose(out["scores"][i, :n].numpy(), data[f"{case}/det_scores_{i}"],
                                   rtol=0, atol=score_atol)
        np.testing.assert_array_equal(out["classes"][i, :n].numpy(),
                                      data[f"{case}/det_labels_{i}"])
        assert not np.any(out["boxes"][i, n:].numpy())


@pytest.mark.parametrize("case", CASES)
def test_detections_float64(data, model64, case):
    """End to end from the input images: torchvision's detections, boxes within 1e-6 px."""
    out = model64(_images(data, case))
    _check_detections(data, case, out, 1e-6, 1e-10)


@pytest.mark.parametrize("case", CASES)
def test_detections_float32(data, model32, case):
    out = model32(_images(data, case).astype(np.float32))
    _check_detections(data, case, out, 1e-4 * 200, 1e-4)  # boxes: 1e-4 of the image size
