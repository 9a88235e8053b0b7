"""Generative losses against the papers' formulas in NumPy, a Monte-Carlo KL estimate and Keras."""

import keras
import numpy as np
import pytest

from kcv.losses import (
    AdversarialLoss,
    CycleConsistencyLoss,
    adversarial_loss,
    cycle_consistency_loss,
    gaussian_kl,
)

from kcv_testing import check_loss


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_gaussian_kl_closed_form_and_hand_cases():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(4, 3)).astype(np.float32)
    log_var = rng.normal(0, 0.5, size=(4, 3)).astype(np.float32)
    # KL(N(m, s^2) || N(0, 1)) per dimension = log(1 / s) + (s^2 + m^2) / 2 - 1/2.
    s2 = np.exp(log_var.astype(np.float64))
    expected = (-0.5 * np.log(s2) + 0.5 * (s2 + mean**2) - 0.5).sum(-1)
    np.testing.assert_allclose(gaussian_kl(mean, log_var).numpy(), expected, rtol=1e-5)
    # N(0, I) from itself: 0; a mean of 2 in one dimension: 2^2 / 2.
    np.testing.assert_allclose(gaussian_kl([[0.0, 0.0], [2.0, 0.0]], np.zeros((2, 2))).numpy(),
                               [0.0, 2.0], atol=1e-7)


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(1)
    mean = np.array([[0.5, -1.0, 0.2]])
    log_var = np.array([[-0.5, 0.3, 0.0]])
    std = np.exp(0.5 * log_var)
    z = mean + std * rng.normal(size=(400_000, 3))

    def log_normal(x, m, s):
        return (-0.5 * np.log(2 * np.pi) - np.log(s) - 0.5 * ((x - m) / s) ** 2).sum(-1)

    estimate = np.mean(log_normal(z, mean, std) - log_normal(z, 0.0, 1.0))
    got = float(gaussian_kl(mean.astype(np.float32), log_var.astype(np.float32))[0])
    assert got == pytest.approx(estimate, abs=0.01)


def test_gaussian_kl_float16_and_errors():
    mean = np.array([[0.5, -1.0]], np.float16)
    out = gaussian_kl(mean, np.zeros((1, 2), np.float16))
    assert out.dtype == "float16"
    np.testing.assert_allclose(out.numpy(), [0.625], rtol=1e-3)
    with pytest.raises(ValueError, match=r"`mean` and `log_var` must have the same shape"):
        gaussian_kl(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("mode", ["non_saturating", "least_squares"])
def test_gan_losses_match_the_papers(mode):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(5, 1)).astype(np.float32)  # D(x) logits
    fake = rng.normal(size=(5, 1)).astype(np.float32)  # D(G(z)) logits
    d_loss = adversarial_loss(np.ones_like(real), real, mode) + adversarial_loss(
        np.zeros_like(fake), fake, mode)
    g_loss = adversarial_loss(np.ones_like(fake), fake, mode)
    if mode == "non_saturating":  # Goodfellow et al. 2014: max log D(x) + log(1 - D(G(z))),
        d, g = _np_sigmoid(real[:, 0]), _np_sigmoid(fake[:, 0])  # G: max log D(G(z))
        expected_d, expected_g = -np.log(d) - np.log(1 - g), -np.log(g)
    else:  # Mao et al. 2017, eq. 2 with a = 0, b = c = 1 (times 2)
        expected_d, expected_g = (real[:, 0] - 1) ** 2 + fake[:, 0] ** 2, (fake[:, 0] - 1) ** 2
    np.testing.assert_allclose(d_loss.numpy(), expected_d, rtol=1e-5)
    np.testing.assert_allclose(g_loss.numpy(), expected_g, rtol=1e-5)


def test_non_saturating_probabilities_match_keras_and_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)  # a PatchGAN map
    labels = np.ones_like(logits)
    expected = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)(
        labels.reshape(3, -1, 1), logits.reshape(3, -1, 1)).numpy().mean(-1)
    np.testing.assert_allclose(adversarial_loss(1.0, logits).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        adversarial_loss(1.0, _np_sigmoid(logits), from_logits=False).numpy(), expected,
        rtol=1e-4)


@pytest.mark.parametrize("mode", ["non_saturating", "least_squares"])
def test_adversarial_loss_check_loss(mode):
    rng = np.random.default_rng(4)
    labels = (rng.uniform(size=(4, 3, 3, 1)) > 0.5).astype(np.float32)
    outputs = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
    check_loss(adversarial_loss, AdversarialLoss, labels, outputs, mode=mode)


def test_cycle_consistency_loss_is_l1_per_image():
    rng = np.random.default_rng(5)
    real = rng.uniform(-1, 1, (3, 4, 5, 3)).astype(np.float32)
    rec = rng.uniform(-1, 1, (3, 4, 5, 3)).astype(np.float32)
    expected = np.abs(rec - real).reshape(3, -1).mean(-1)
    np.testing.assert_allclose(cycle_consistency_loss(real, rec).numpy(), expected, rtol=1e-6)
    keras_mae = keras.losses.MeanAbsoluteError()(real.reshape(3, -1), rec.reshape(3, -1))
    assert float(CycleConsistencyLoss()(real, rec)) == pytest.approx(float(keras_mae), rel=1e-6)
    check_loss(cycle_consistency_loss, CycleConsistencyLoss, real, rec)


def test_generative_loss_errors():
    with pytest.raises(ValueError, match=r"`mode` must be one of .* Received: mode='wgan'"):
        adversarial_loss(1.0, [[0.0]], mode="wgan")
    with pytest.raises(ValueError, match=r"Received: mode='hinge'"):
        AdversarialLoss(mode="hinge")
    with pytest.raises(ValueError, match=r"same shape"):
        cycle_consistency_loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 1)))
