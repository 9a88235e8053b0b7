"""kcv's torchvision Faster R-CNN port against torchvision's own outputs.

The numbers come from torchvision 0.29.1 itself (tools/make_torchvision_fixtures.py): a
narrow `fasterrcnn_resnet50_fpn` (every block and key of ResNet-50-FPN, narrower layers) with
random weights and FrozenBatchNorm statistics, run in float64, stage by stage.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from kcv.models.backbones.torchvision_resnet import FrozenBatchNormalization
from kcv.models.detection.torchvision_port import (
    faster_rcnn_from_torchvision,
    greedy_nms,
    normalize_state_dict_keys,
    resize_bilinear,
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


_STAGES = {}


def _stages(data, model, case):
    """`model.stages` on a case's images, computed once per model and case."""
    key = (model.name, case)
    if key not in _STAGES:
        images = _images(data, case).astype(model.compute_dtype)
        _STAGES[key] = model.stages(tf.constant(images))
    return _STAGES[key]


def _xyxy_to_yxyx(b):
    return np.asarray(b)[..., [1, 0, 3, 2]]


@pytest.mark.parametrize("case", CASES)
def test_transform_float64(data, model64, case):
    out = _stages(data, model64, case)
    assert tuple(int(s) for s in out["image_size"]) == tuple(data[f"{case}/image_size"])
    np.testing.assert_allclose(out["transformed"].numpy(), data[f"{case}/transformed"], rtol=0,
                               atol=1e-12)


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
    out = _stages(data, model64, "upscale")
    objectness, deltas, anchors = out["objectness"], out["deltas"], out["anchors"]
    b = objectness[0].shape[0]
    for i in range(5):
        np.testing.assert_allclose(objectness[i].numpy(),
                                   data[f"upscale/objectness_{i}"].reshape(b, -1),
                                   rtol=0, atol=1e-8)
        np.testing.assert_allclose(deltas[i].numpy(),
                                   data[f"upscale/deltas_{i}"].reshape(b, -1, 4),
                                   rtol=0, atol=1e-8)
    np.testing.assert_array_equal(np.concatenate([a.numpy() for a in anchors]),
                                  data["upscale/anchors"])


def _unmatched(actual, expected, atol):
    """Rows of `expected` with no row of `actual` within `atol` (sets, order ignored)."""
    dist = np.abs(np.asarray(actual)[None] - np.asarray(expected)[:, None]).max(-1)
    return np.flatnonzero(dist.min(1) > atol) if len(actual) else np.arange(len(expected))


def _check_proposals(data, case, proposals, count, atol, ordered=True):
    for i in range(proposals.shape[0]):
        expected = data[f"{case}/proposals_{i}"]
        assert int(count[i]) == len(expected)
        actual = proposals[i, :len(expected)].numpy()
        if ordered:
            np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)
        else:  # float32: near-tied scores may swap places
            assert _unmatched(actual, expected, atol).tolist() == []
        assert not np.any(proposals[i, len(expected):].numpy())


@pytest.mark.parametrize("case", CASES)
def test_proposals_float64(data, model64, case):
    """Same proposals in the same (score) order, within 1e-6 px."""
    out = _stages(data, model64, case)
    _check_proposals(data, case, out["proposals"], out["num_proposals"], 1e-6)


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
    _check_detections(data, case, _stages(data, model64, case), 1e-6, 1e-10)


@pytest.mark.parametrize("case", CASES)
def test_proposals_and_detections_float32(data, model32, case):
    """float32: the same proposals and detections, within 1e-4 of the image size (px)."""
    out = _stages(data, model32, case)
    _check_proposals(data, case, out["proposals"], out["num_proposals"], 1e-4 * 160,
                     ordered=False)
    _check_detections(data, case, out, 1e-4 * 200, 1e-4)


def test_call_returns_the_detections(data, model64):
    out = model64(_images(data, "noresize")[:, :, :, :])
    assert sorted(out) == ["boxes", "classes", "num_detections", "scores"]
    assert out["classes"].dtype == tf.int32 and tuple(out["boxes"].shape) == (1, 100, 4)
    _check_detections(data, "noresize", out, 1e-6, 1e-10)


def test_old_key_layout_is_accepted(data, model64):
    """Checkpoints saved before torchvision's FPN/RPN-head renames load the same weights."""
    old = {}
    for key, value in _state_dict(data).items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                key = key.replace(f"backbone.fpn.{block}.{i}.0.", f"backbone.fpn.{block}.{i}.")
        old[key] = value
    assert "rpn.head.conv.weight" in old and "backbone.fpn.inner_blocks.3.bias" in old
    assert sorted(normalize_state_dict_keys(old)) == sorted(_state_dict(data))
    model = faster_rcnn_from_torchvision(old, dtype="float64", min_size=128, max_size=160)
    for a, b in zip(model.weights, model64.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_and_unused_keys_are_listed(data):
    sd = _state_dict(data)
    del sd["backbone.body.layer3.2.bn2.running_var"]
    sd["roi_heads.mask_head.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"Missing keys \(1\): \['backbone.body.layer3.2.bn2"
                       r".running_var'\]. Unused keys \(1\): \['roi_heads.mask_head.weight'\]"):
        faster_rcnn_from_torchvision(sd)


def test_shape_mismatch_names_the_key(data):
    sd = _state_dict(data)
    sd["backbone.body.layer1.1.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(ValueError, match="layer1.1.conv2.weight"):
        faster_rcnn_from_torchvision(sd)


def test_pth_needs_the_torch_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"kcv\[torch\]"):
        faster_rcnn_from_torchvision(str(tmp_path / "model.pth"))


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "float16"}, "`dtype` must be"),
    ({"architecture": "maskrcnn_resnet50_fpn"}, "`architecture` must be one of"),
    ({"rpn_nms_threshold": 0.5}, "Unknown overrides \\['rpn_nms_threshold'\\]"),
    ({"num_classes": 1}, "must be an int >= 2. Received: num_classes=1"),
])
def test_bad_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        faster_rcnn_from_torchvision(_state_dict(data), **kwargs)


def test_state_dict_type_is_checked():
    with pytest.raises(TypeError, match="`state_dict` must be a path or a mapping"):
        faster_rcnn_from_torchvision([1, 2])


def test_greedy_nms_at_the_threshold():
    """IoU exactly 0.5 is kept (torchvision suppresses only IoU > threshold); groups apart."""
    boxes = tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0],  # IoU 0.5
                          [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with box 0, other group
                          [1.0, 0.0, 10.0, 10.0]]], tf.float64)  # IoU 0.9 with box 0
    keep, n = greedy_nms(boxes, tf.constant([[0.9, 0.8, 0.7, 0.6]], tf.float64),
                         tf.constant([[True, True, True, True]]), tf.constant([[0, 0, 1, 0]]),
                         0.5, 4)
    np.testing.assert_array_equal(keep.numpy(), [[0, 1, 2, 0]])
    assert n.numpy().tolist() == [3]


def test_resize_bilinear_matches_pytorch_by_hand():
    """2 -> 5 samples: source (i + 0.5) * 0.4 - 0.5 clamped at 0 (PyTorch, align_corners=False)."""
    x = tf.constant([[[[1.0], [3.0]]]], tf.float64)
    out = resize_bilinear(x, (1, 5))[0, 0, :, 0].numpy()
    src = np.clip((np.arange(5) + 0.5) * 0.4 - 0.5, 0, None)
    np.testing.assert_allclose(out, 1.0 + 2.0 * np.minimum(src, 1.0), rtol=1e-15)


def test_cli_converts_to_a_keras_file(data, tmp_path, capsys):
    """`kcv convert-torchvision` -> .keras; the reloaded model gives torchvision's detections."""
    import keras

    from kcv.cli import main

    checkpoint = tmp_path / "sd.npz"
    np.savez(checkpoint, **_state_dict(data))
    out = tmp_path / "frcnn.keras"
    assert main(["convert-torchvision", str(checkpoint), str(out), "--dtype", "float64",
                 "--min-size", "128", "--max-size", "160"]) == 0
    assert '"num_classes": 5' in capsys.readouterr().out
    model = keras.saving.load_model(out, compile=False)
    _check_detections(data, "noresize", model(_images(data, "noresize")), 1e-6, 1e-10)
    assert main(["convert-torchvision", str(checkpoint), str(tmp_path / "x.h5")]) == 1
    assert "must end with .keras or .weights.h5" in capsys.readouterr().err


def test_torchvision_state_dict_round_trip(data, model32):
    """Keras -> torchvision layouts give back the checkpoint's arrays (and only its keys)."""
    sd = _state_dict(data)
    back = model32.torchvision_state_dict()
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


V2 = "fasterrcnn_resnet50_fpn_v2"
FIXTURE_V2 = FIXTURE.replace("_v1.npz", "_v2.npz")


@pytest.fixture(scope="module")
def data_v2():
    with np.load(FIXTURE_V2) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model64_v2(data_v2):
    return faster_rcnn_from_torchvision(_state_dict(data_v2), V2, dtype="float64",
                                        min_size=128, max_size=160)


def test_v2_features_and_heads_float64(data_v2, model64_v2):
    """v2: FPN with batch norm, two-conv RPN head, conv box head (torchvision's numbers)."""
    assert model64_v2.rpn_head.conv_depth == 2 and len(model64_v2.box_convs) == 4
    out = _stages(data_v2, model64_v2, "downscale")
    for i, p in enumerate(out["features"]):
        np.testing.assert_allclose(p.numpy(), data_v2[f"downscale/P{i}"], rtol=0, atol=1e-8)
    for i, o in enumerate(out["objectness"]):
        np.testing.assert_allclose(o.numpy(), data_v2[f"downscale/objectness_{i}"].reshape(1, -1),
                                   rtol=0, atol=1e-8)
    rois = data_v2["downscale/fixed_rois"]
    logits, _ = model64_v2.box_head(out["features"], tf.constant(rois[None]))
    np.testing.assert_allclose(logits[0].numpy(), data_v2["downscale/fixed_logits"], rtol=0,
                               atol=1e-8)


@pytest.mark.parametrize("case", ("downscale", "noresize"))
def test_v2_proposals_and_detections_float64(data_v2, model64_v2, case):
    out = _stages(data_v2, model64_v2, case)
    _check_proposals(data_v2, case, out["proposals"], out["num_proposals"], 1e-6)
    _check_detections(data_v2, case, out, 1e-6, 1e-10)


def test_v2_keys_round_trip_and_v1_keys_are_refused(data, data_v2, model64_v2):
    sd = _state_dict(data_v2)
    assert sorted(model64_v2.torchvision_state_dict()) == sorted(sd)
    assert "roi_heads.box_head.5.weight" in sd and "backbone.fpn.inner_blocks.0.1.running_var" in sd
    with pytest.raises(ValueError, match="no `roi_heads.box_head.5.weight`"):
        faster_rcnn_from_torchvision(_state_dict(data), V2)


def test_resnet_from_torchvision_gives_torchvision_c2_to_c5(data):
    """The detector's torchvision ResNet alone (prefix `backbone.body.`, FrozenBN eps 0)."""
    from kcv.models.backbones import resnet_from_torchvision

    sd = {**_state_dict(data), "backbone.body.fc.weight": np.zeros((3, 256))}
    body = resnet_from_torchvision(sd, "backbone.body.", epsilon=0.0, dtype="float64")
    for i, c in enumerate(body(tf.constant(data["upscale/transformed"]))):
        np.testing.assert_allclose(c.numpy(), data[f"upscale/C{i + 2}"], rtol=0, atol=1e-8)
    del sd["backbone.body.layer4.2.conv3.weight"]
    with pytest.raises(ValueError, match=r"Missing keys \(1\): \['backbone.body.layer4.2.conv3"):
        resnet_from_torchvision(sd, "backbone.body.")
