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
