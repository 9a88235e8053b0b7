"""VAE: the standard model checks, the loss terms against NumPy, the reparameterised samples'
moments, and the ELBO improving on scikit-learn's handwritten digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from kcv.models import VAE

from kcv_testing import check_layer


def _mlp_vae(latent_dim=2, shape=(4, 4, 1), units=8, **kwargs):
    size = int(np.prod(shape))
    images = keras.Input(shape)
    h = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(images))
    encoder = keras.Model(images, [keras.layers.Dense(latent_dim, name="mean")(h),
                                   keras.layers.Dense(latent_dim, name="log_var")(h)])
    z = keras.Input((latent_dim,))
    h = keras.layers.Dense(units, activation="relu")(z)
    decoder = keras.Model(z, keras.layers.Reshape(shape)(keras.layers.Dense(size)(h)))
    return VAE(encoder, decoder, latent_dim=latent_dim, **kwargs)


def test_vae_standard_checks():
    # A batch of 16: with 3 images the per-image sums of the ELBO make the first float16
    # backward pass overflow at the initial loss scale 2^15, and Keras skips that step.
    x = np.random.default_rng(0).uniform(size=(16, 4, 4, 1)).astype(np.float32)
    # The VAE is a subclassed model without `inputs`, which the TFLite exporter needs: its
    # generator (the functional decoder) is what exports, checked in full below.
    vae = check_layer(lambda: _mlp_vae(seed=3), x, tflite=False)
    check_layer(lambda: _mlp_vae(seed=3).decoder, np.asarray(vae.encode(x)[0]))


def test_vae_loss_terms_match_numpy():
    vae = _mlp_vae(beta=0.5)
    # log_var = -40: the posterior is a point mass at the mean, so z = mean exactly.
    log_var = vae.encoder.get_layer("log_var")
    log_var.set_weights([np.zeros_like(log_var.kernel), np.full(2, -40.0, np.float32)])
    x = np.random.default_rng(1).uniform(size=(5, 4, 4, 1)).astype(np.float32)
    mean, _ = (np.asarray(t, np.float64) for t in vae.encoder(x))
    logits = np.asarray(vae.decoder(mean.astype(np.float32)), np.float64).reshape(5, -1)
    p, t = 1 / (1 + np.exp(-logits)), x.reshape(5, -1)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(-1)
    kl = -0.5 * (1 - 40.0 - mean**2 - np.exp(-40.0)).sum(-1)  # Kingma & Welling, appendix B
    losses = {k: float(v) for k, v in vae.compute_losses(x).items()}
    assert losses["reconstruction_loss"] == pytest.approx(bce.mean(), rel=1e-5)
    assert losses["kl_loss"] == pytest.approx(kl.mean(), rel=1e-5)
    assert losses["loss"] == pytest.approx((bce + 0.5 * kl).mean(), rel=1e-5)
    np.testing.assert_allclose(vae.reconstruct(x).numpy().reshape(5, -1), p, rtol=1e-5)


def test_vae_gaussian_reconstruction_is_half_squared_error():
    vae = _mlp_vae(reconstruction="gaussian")
    log_var = vae.encoder.get_layer("log_var")
    log_var.set_weights([np.zeros_like(log_var.kernel), np.full(2, -40.0, np.float32)])
    x = np.random.default_rng(2).uniform(size=(4, 4, 4, 1)).astype(np.float32)
    out = np.asarray(vae(x), np.float64)  # no sigmoid: the decoder returns the image
    expected = 0.5 * ((out - x) ** 2).reshape(4, -1).sum(-1).mean()
    assert float(vae.compute_losses(x)["reconstruction_loss"]) == pytest.approx(expected,
                                                                                rel=1e-5)


def test_reparameterised_samples_have_the_posterior_moments_and_gradients():
    vae = _mlp_vae(seed=0)
    mean = tf.constant([[1.0, -2.0]] * 40_000)
    log_var = tf.constant([[np.log(0.25), np.log(4.0)]] * 40_000, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([mean, log_var])
        z = vae.reparameterize(mean, log_var)
    zs = z.numpy()
    np.testing.assert_allclose(zs.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(zs.var(0), [0.25, 4.0], rtol=0.03)
    # dz/dmean = 1 and dz/dlog_var = (z - mean) / 2 per element.
    np.testing.assert_allclose(tape.gradient(z, mean).numpy(), 1.0)
    np.testing.assert_allclose(tape.gradient(z, log_var).numpy(), (zs - mean.numpy()) / 2,
                               atol=1e-5)


@pytest.mark.slow
def test_vae_elbo_improves_on_digits():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    train, held_out = x[:1400], x[1400:]
    keras.utils.set_random_seed(0)
    vae = _mlp_vae(latent_dim=4, shape=(8, 8, 1), units=64, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = vae.evaluate(held_out, batch_size=400, verbose=0, return_dict=True)
    history = vae.fit(train, epochs=30, batch_size=64, verbose=0)
    after = vae.evaluate(held_out, batch_size=400, verbose=0, return_dict=True)
    assert set(history.history) == {"loss", "reconstruction_loss", "kl_loss"}
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    # An outside yardstick: reconstructions beat the mean training digit on unseen digits.
    mse = float(np.mean((vae.reconstruct(held_out).numpy() - held_out) ** 2))
    baseline = float(np.mean((train.mean(0) - held_out) ** 2))
    assert mse < 0.6 * baseline, (mse, baseline)
    samples = vae.sample(6).numpy()
    assert samples.shape == (6, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 1


def test_vae_argument_errors():
    good = _mlp_vae()
    with pytest.raises(ValueError, match=r"`latent_dim` must be a positive integer. Received: "
                                         r"latent_dim=0"):
        VAE(good.encoder, good.decoder, latent_dim=0)
    with pytest.raises(ValueError, match=r"`beta` must be a number >= 0. Received: beta=-1"):
        VAE(good.encoder, good.decoder, latent_dim=2, beta=-1)
    with pytest.raises(ValueError, match=r"Received: reconstruction='l1'"):
        VAE(good.encoder, good.decoder, latent_dim=2, reconstruction="l1")
    with pytest.raises(TypeError, match=r"`encoder` must be a keras.Model"):
        VAE("encoder", good.decoder, latent_dim=2)
    with pytest.raises(ValueError, match=r"`encoder` must have 2 outputs"):
        VAE(good.decoder, good.decoder, latent_dim=2)
    with pytest.raises(ValueError, match=r"`latent_dim`=3 channels"):
        VAE(good.encoder, good.decoder, latent_dim=3)
    with pytest.raises(ValueError, match=r"Received: num_samples=0"):
        good.sample(0)
