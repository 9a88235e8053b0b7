"""HRNetPose: the paper's parameter counts, the output resolution, the shared layer routine,
and the decoding against a NumPy transcription of the reference code's `get_final_preds`."""

import numpy as np
import pytest

from kcv.models import HRNetPose
from kcv.models.pose import decode_heatmaps

from kcv_testing import check_layer

SMALL = {"width": 4, "num_modules": (1, 1, 1, 1), "num_blocks": 1, "stem_filters": 8}


def test_paper_parameter_count():
    # Sun et al. 2019, Table 1 (COCO): HRNet-W32 has 28.5M parameters (PyTorch counts no
    # batch-norm running statistics, so the trainable weights here; W48 gives the paper's
    # 63.6M too, left out for time). The count does not depend on the input size.
    model = HRNetPose((32, 32, 3), 17, width=32)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(count / 1e6, 1) == 28.5


def test_shared_layer_routine_and_resolution():
    x = np.random.default_rng(0).random((1, 32, 64, 3)).astype("float32")
    # xla_atol=1e-4: the linear heatmaps of the untrained net reach |8|, where XLA's fused
    # order differs by ~1e-6 relative (1.3e-5 absolute measured). train=False: the
    # same symptom as OpenPose's MobileNetV2 backbone (test_openpose.py, where the first
    # gradients were measured above 2 and overflow float16 at Keras' initial loss scale 2**15,
    # so the LossScaleOptimizer skips the routine's single step by design); the
    # mixed_float16 forward pass is still compared.
    model = check_layer(lambda: HRNetPose((32, 64, 3), 5, **SMALL), x, xla_atol=1e-4,
                        train=False)
    assert model.output.shape[1:] == (8, 16, 5)


def _numpy_get_final_preds(heatmaps):
    """deep-high-resolution-net.pytorch lib/core/inference.py, for [K, H, W] maps, without
    the crop-to-image transform."""
    num, height, width = heatmaps.shape
    out = np.zeros((num, 3))
    for k, hm in enumerate(heatmaps):
        idx = np.argmax(hm.reshape(-1))
        px, py = idx % width, idx // width
        coords = np.array([px, py], np.float64)
        if 1 < px < width - 1 and 1 < py < height - 1:
            diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
            coords += np.sign(diff) * 0.25
        out[k] = (*coords, hm.max())
    return out


def test_decoding_matches_the_reference_code():
    rng = np.random.default_rng(0)
    heat = rng.random((2, 7, 6, 5)).astype(np.float32)
    heat[0, 0, 3, 0] = 2.0  # a maximum on the border: no offset
    got = decode_heatmaps(heat, stride=4).numpy()
    for b in range(2):
        expected = _numpy_get_final_preds(heat[b].transpose(2, 0, 1))
        expected[:, :2] *= 4
        np.testing.assert_allclose(got[b], expected, rtol=1e-6)
    assert got[0, 0].tolist() == [12.0, 0.0, 2.0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: HRNetPose((48, 64, 3), 17, **SMALL), r"divisible by 32.*\(48, 64, 3\)"),
        (lambda: HRNetPose((64, 64, 3), 0, **SMALL), "num_keypoints"),
        (lambda: HRNetPose((64, 64), 17, **SMALL), "input_shape"),
        (lambda: decode_heatmaps(np.zeros((4, 4, 2))), r"heatmaps.shape=\(4, 4, 2\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
