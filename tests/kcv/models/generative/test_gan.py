"""GAN: DCGAN networks through the standard checks, the train_step's losses against NumPy of the
papers' formulas, training under mixed precision, and the `.keras` round trip."""

import os

import keras
import numpy as np
import pytest

from kcv.models import GAN, DCGANDiscriminator, DCGANGenerator

from kcv_testing import check_config_round_trip, check_keras_reload, check_layer


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _dcgan(mode="non_saturating", **kwargs):
    return GAN(DCGANGenerator(8, (8, 8, 1), filters=4),
               DCGANDiscriminator((8, 8, 1), filters=4), latent_dim=8, mode=mode, **kwargs)


def test_dcgan_generator_standard_checks():
    z = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    model = check_layer(lambda: DCGANGenerator(8, (16, 8, 3), filters=4, num_upsamplings=3), z)
    images = np.asarray(model(z))
    assert images.shape == (4, 16, 8, 3) and np.abs(images).max() <= 1


def test_dcgan_discriminator_standard_checks():
    x = np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    # train=False: check_layer's single step starts at the loss scale 2^15, at which this
    # network's float16 gradients can overflow, so Keras skips the step (the scale then
    # halves). test_gan_trains_both_players_under_mixed_precision trains it over 4 steps.
    model = check_layer(lambda: DCGANDiscriminator((8, 8, 1), filters=4), x, train=False)
    assert model.output_shape == (None, 1)


@pytest.mark.parametrize("mode", ["non_saturating", "least_squares"])
def test_train_step_losses_match_the_papers(mode):
    # A generator that ignores z (zero kernel: every image is its bias) and a discriminator
    # without batch norm make D(x) and D(G(z)) known; learning rate 0 keeps them fixed.
    z = keras.Input((4,))
    dense = keras.layers.Dense(16, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.RandomUniform(-1, 1))
    generator = keras.Model(z, keras.layers.Reshape((4, 4, 1))(dense(z)))
    images = keras.Input((4, 4, 1))
    logit = keras.layers.Dense(1)(keras.layers.Flatten()(images))
    discriminator = keras.Model(images, logit)
    gan = GAN(generator, discriminator, latent_dim=4, mode=mode, seed=0)
    gan.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(0.0))
    real = np.random.default_rng(2).uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
    logs = gan.fit(real, batch_size=6, epochs=1, verbose=0).history

    kernel, bias = (np.asarray(w, np.float64) for w in discriminator.get_weights())
    d_real = real.reshape(6, -1) @ kernel[:, 0] + bias[0]
    d_fake = np.asarray(dense.bias, np.float64) @ kernel[:, 0] + bias[0]
    if mode == "non_saturating":  # Goodfellow et al. 2014, with the non-saturating G loss
        d_loss = np.mean(-np.log(_np_sigmoid(d_real))) - np.log(1 - _np_sigmoid(d_fake))
        g_loss = -np.log(_np_sigmoid(d_fake))
    else:  # Mao et al. 2017, 0-1 coding
        d_loss = np.mean((d_real - 1) ** 2) + d_fake**2
        g_loss = (d_fake - 1) ** 2
    assert logs["d_loss"][0] == pytest.approx(d_loss, rel=1e-5)
    assert logs["g_loss"][0] == pytest.approx(g_loss, rel=1e-5)


def test_gan_trains_both_players_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    gan = _dcgan(seed=1)
    gan.compile()
    generator_before = [np.array(w) for w in gan.generator.trainable_weights]
    discriminator_before = [np.array(w) for w in gan.discriminator.trainable_weights]
    real = np.random.default_rng(3).uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    logs = gan.fit(real, batch_size=8, epochs=2, verbose=0).history
    assert set(logs) == {"d_loss", "g_loss"}
    assert np.all(np.isfinite(logs["d_loss"] + logs["g_loss"]))
    for before, model in ((generator_before, gan.generator),
                          (discriminator_before, gan.discriminator)):
        assert any(not np.array_equal(b, np.array(a))
                   for b, a in zip(before, model.trainable_weights)), model.name
    assert gan.sample(3).shape == (3, 8, 8, 1)


def test_gan_round_trips_through_keras_files(tmp_path):
    gan = _dcgan("least_squares", seed=4)
    z = np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32)
    check_config_round_trip(gan, [z])
    check_keras_reload(gan, [z])
    # A trained, compiled GAN reloads with both optimizers' state.
    gan.compile()
    gan.fit(np.random.default_rng(5).uniform(-1, 1, (8, 8, 8, 1)), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "gan.keras")
    gan.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is GAN and loaded.mode == "least_squares"
    np.testing.assert_allclose(np.asarray(loaded(z)), np.asarray(gan(z)), atol=1e-6)
    for name in ("generator_optimizer", "discriminator_optimizer"):
        saved, got = getattr(gan, name), getattr(loaded, name)
        assert int(got.iterations) == int(saved.iterations) == 1, name
        np.testing.assert_allclose(np.asarray(got.variables[-1]),
                                   np.asarray(saved.variables[-1]), err_msg=name)


def test_gan_argument_errors():
    gan = _dcgan()
    with pytest.raises(ValueError, match=r"Received: mode='wgan'"):
        GAN(gan.generator, gan.discriminator, latent_dim=8, mode="wgan")
    with pytest.raises(ValueError, match=r"Received: latent_dim=-2"):
        GAN(gan.generator, gan.discriminator, latent_dim=-2)
    with pytest.raises(TypeError, match=r"`discriminator` must be a keras.Model"):
        GAN(gan.generator, None, latent_dim=8)
    with pytest.raises(TypeError, match=r"not `loss`. Received: loss='mse'"):
        gan.compile(loss="mse")
    with pytest.raises(ValueError, match=r"multiples of 4 .* Received: output_shape=\(6, 8, 1\)"):
        DCGANGenerator(8, (6, 8, 1))
    with pytest.raises(ValueError, match=r"Received: input_shape=\(8, 8\)"):
        DCGANDiscriminator((8, 8))
