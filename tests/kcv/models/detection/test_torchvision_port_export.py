"""The torchvision Faster R-CNN port exported like kcv's own detectors: a uint8 SavedModel that
runs without kcv, and a TFLite model of builtins only that gives torchvision's detections.

The checkpoint and the image are the fixture of test_torchvision_port.py (a narrow
`fasterrcnn_resnet50_fpn` with random weights; its detections come from torchvision 0.29.1).
"""

import re

import numpy as np
import pytest
import test_torchvision_port as port_tests

import export
from export._litert import interpreter
from kcv.models.detection.torchvision_port import (
    TorchvisionFasterRCNN,
    faster_rcnn_from_torchvision,
)

from kcv_testing import (
    assert_same_detections,
    convert_to_tflite_with_fallbacks,
    run_saved_model_without_kcv,
)

data = port_tests.data  # the fixture checkpoint and torchvision's outputs (a pytest fixture)
_state_dict = port_tests._state_dict
_NAMES = ["boxes", "scores", "classes", "num_detections"]
_SIZES = dict(min_size=128, max_size=160)  # the fixture's transform


def _keras(model, images):
    return {k: np.asarray(v) for k, v in model(images).items()}


def _torchvision(data, case, image=0):
    """torchvision's detections of a fixture image, as kcv returns them (yxyx)."""
    return (data[f"{case}/det_boxes_{image}"][:, [1, 0, 3, 2]],
            data[f"{case}/det_scores_{image}"], data[f"{case}/det_labels_{image}"])


def test_tflite_is_builtins_only_and_gives_the_keras_and_torchvision_detections(data):
    pixels = data["upscale/images"][:1]  # 96 x 120, resized to 128 x 160 inside
    model = faster_rcnn_from_torchvision(_state_dict(data), input_shape=pixels.shape[1:],
                                         **_SIZES)
    content, fallbacks = convert_to_tflite_with_fallbacks(model)
    assert not fallbacks, fallbacks  # the frozen serving function, not the full SavedModel
    ops = export.tflite_ops(content)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    assert {"WHILE", "TOPK_V2", "GATHER", "CONV_2D", "SOFTMAX"} <= set(ops)  # NMS, RoIAlign, heads
    runner = interpreter(content).get_signature_runner()
    (detail,) = runner.get_input_details().values()
    assert list(detail["shape"]) == [1, 96, 120, 3] and detail["dtype"] == np.float32
    images = pixels.astype(np.float32) / 255.0
    want = _keras(model, images)
    got = dict(zip(_NAMES, export.run_tflite(content, images, output_names=_NAMES)))
    assert want["num_detections"][0] == 100  # many detections with distinct scores
    assert_same_detections(got, want, box_atol=1e-3, score_atol=1e-4)
    boxes, scores, labels = _torchvision(data, "upscale")  # and they are torchvision's
    np.testing.assert_array_equal(got["classes"][0], labels)
    np.testing.assert_allclose(got["boxes"][0], boxes, atol=1e-4 * 200, rtol=0)  # as the float32 port test
    np.testing.assert_allclose(got["scores"][0], scores, atol=1e-4, rtol=0)


def test_saved_model_takes_uint8_of_any_size_and_runs_without_kcv(data, tmp_path):
    model = faster_rcnn_from_torchvision(_state_dict(data), **_SIZES)  # any input size
    path = export.to_saved_model(model, tmp_path / "frcnn" / "1")
    pixels = data["noresize/images"]  # 128 x 150: a size the export never saw
    names, out = run_saved_model_without_kcv(path, {"images": pixels})
    assert names == ["images"] and sorted(out) == sorted(_NAMES)
    assert out["classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    want = _keras(model, pixels.astype(np.float32) / 255.0)
    assert_same_detections(out, want, box_atol=1e-3, score_atol=1e-5)
    boxes, _, labels = _torchvision(data, "noresize")
    np.testing.assert_array_equal(out["classes"][0], labels)
    np.testing.assert_allclose(out["boxes"][0], boxes, atol=1e-4 * 200, rtol=0)  # as the float32 port test


@pytest.mark.parametrize("input_shape", [(96, 120), (96, 120, 1), (0, 120, 3), "96x120"])
def test_bad_input_shape_is_refused(input_shape):
    match = r"`input_shape` must be \(height, width, 3\).*" + re.escape(
        f"Received: input_shape={input_shape!r}")
    with pytest.raises(ValueError, match=match):
        TorchvisionFasterRCNN(input_shape=input_shape)


def test_input_shape_is_in_the_config(data):
    model = faster_rcnn_from_torchvision(_state_dict(data), input_shape=(96, 120, 3), **_SIZES)
    config = model.get_config()
    assert config["input_shape"] == (96, 120, 3)
    _, specs = model.serving_signature("uint8", 2)
    assert specs[0].shape.as_list() == [2, 96, 120, 3] and specs[0].dtype.name == "uint8"
