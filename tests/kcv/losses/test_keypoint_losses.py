"""The masked L2 loss against NumPy (weights per channel, per pixel, none), a hand-computed
case, the shared loss contract (`check_loss`), and one loss per stage of a two-output model."""

import keras
import numpy as np
import pytest

from kcv.losses import MaskedL2Loss, masked_l2_loss, stage_losses

from kcv_testing import check_loss


def _data(weights):
    rng = np.random.default_rng(0)
    y_pred = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    targets = rng.random((3, 4, 5, 6)).astype(np.float32)
    if weights == "none":
        return targets, y_pred, np.ones_like(targets)
    w = (rng.random((3, 4, 5, 6 if weights == "channel" else 1)) > 0.3).astype(np.float32)
    return np.concatenate([targets, w], -1), y_pred, np.broadcast_to(w, targets.shape)


@pytest.mark.parametrize("weights", ["none", "channel", "pixel"])
@pytest.mark.parametrize("normalize", [False, True])
def test_against_numpy(weights, normalize):
    y_true, y_pred, w = _data(weights)
    targets = y_true[..., :6]
    expected = (w * (y_pred.astype(np.float64) - targets) ** 2).reshape(3, -1)
    expected = expected.mean(1) if normalize else expected.sum(1)
    np.testing.assert_allclose(masked_l2_loss(y_true, y_pred, normalize=normalize), expected,
                               rtol=1e-5)


def test_hand_computed_masked_pixel():
    # A 1x2 map: errors 1 and 3, the second pixel masked: 1 * 1 + 0 * 9 = 1 (mean: 1/2).
    y_true = np.array([[[[0.0, 1.0], [0.0, 0.0]]]])
    y_pred = np.array([[[[1.0], [3.0]]]])
    assert masked_l2_loss(y_true, y_pred).numpy().tolist() == [1.0]
    assert masked_l2_loss(y_true, y_pred, normalize=True).numpy().tolist() == [0.5]


@pytest.mark.parametrize("weights, normalize", [("channel", False), ("pixel", True)])
def test_shared_loss_contract(weights, normalize):
    y_true, y_pred, _ = _data(weights)
    check_loss(masked_l2_loss, MaskedL2Loss, y_true, y_pred, normalize=normalize)


def test_one_loss_per_stage_sums_the_stages():
    inputs = keras.Input((4, 4, 2))
    heat = keras.layers.Conv2D(3, 1, name="stage1_heatmaps")(inputs)
    pafs = keras.layers.Conv2D(4, 1, name="stage1_pafs")(inputs)
    model = keras.Model(inputs, {"stage1_heatmaps": heat, "stage1_pafs": pafs})
    model.compile("sgd", loss=stage_losses(model.output_names))
    rng = np.random.default_rng(1)
    x = rng.random((2, 4, 4, 2)).astype(np.float32)
    y = {"stage1_heatmaps": rng.random((2, 4, 4, 4)).astype(np.float32),  # + pixel weight
         "stage1_pafs": rng.random((2, 4, 4, 4)).astype(np.float32)}
    out = model(x)
    expected = sum(float(np.mean(masked_l2_loss(y[k], out[k]))) for k in y)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize(
    "call, match, error",
    [
        (lambda: masked_l2_loss(np.zeros((2, 3, 5)), np.zeros((2, 3, 2))),
         r"C = 2.*y_true.shape=\(2, 3, 5\)", ValueError),
        (lambda: masked_l2_loss(np.zeros((2, 4, 2)), np.zeros((2, 3, 2))), "same shape",
         ValueError),
        (lambda: MaskedL2Loss(normalize=1), "normalize=1", TypeError),
        (lambda: stage_losses([]), "output_names", ValueError),
    ],
)
def test_bad_arguments(call, match, error):
    with pytest.raises(error, match=match):
        call()
