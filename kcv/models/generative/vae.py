"""Variational auto-encoder (Kingma & Welling, 2014) as a `keras.Model` with its own `train_step`."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int
from kcv.losses.generative import gaussian_kl
from kcv.models.generative import _common

_RECONSTRUCTIONS = ("bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="kcv")
class VAE(keras.Model):
    """Variational auto-encoder: an encoder to q(z|x), the reparameterisation trick, a decoder.

    The loss, minimised by `fit`, is the negative ELBO per image averaged over the batch:

        loss = mean_b [reconstruction(x_b, decoder(z_b)) + beta * KL(q(z|x_b) || N(0, I))],
        z_b = mean_b + exp(log_var_b / 2) * eps,  eps ~ N(0, I)

    with the KL term `kcv.losses.gaussian_kl` and the reconstruction term the negative
    log-likelihood of `x` (summed over pixels) under the decoder: `"bernoulli"` (the decoder
    returns logits; binary crossentropy against `x` in [0, 1]) or `"gaussian"` (the decoder
    returns the image; `0.5 * squared error`, unit variance, constants dropped). `beta > 1`
    is the beta-VAE (Higgins et al. 2017). `fit` logs `loss`, `reconstruction_loss` and
    `kl_loss`.

    Calling the model returns the reconstruction of the posterior mean (deterministic, so it
    exports); `reconstruct(x)` does the same, `sample(n)` decodes draws from the prior.

    Args:
        encoder: a `keras.Model` from images `[B, H, W, C]` to two outputs `[mean, log_var]`,
            each `[B, latent_dim]`.
        decoder: a `keras.Model` from `[B, latent_dim]` to `[B, H, W, C]` (logits for
            `"bernoulli"`, images for `"gaussian"`).
        latent_dim: the size of z.
        beta: the weight of the KL term (>= 0; default 1, the ELBO).
        reconstruction: `"bernoulli"` (default) or `"gaussian"`.
        seed: seed of the reparameterisation and prior noise (`None`: unseeded).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
        >>> encoder_in = keras.Input((4, 4, 1))
        >>> h = keras.layers.Flatten()(encoder_in)
        >>> encoder = keras.Model(encoder_in, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
        >>> decoder_in = keras.Input((2,))
        >>> decoder = keras.Model(decoder_in, keras.layers.Reshape((4, 4, 1))(
        ...     keras.layers.Dense(16)(decoder_in)))
        >>> vae = VAE(encoder, decoder, latent_dim=2)
        >>> vae.compile(optimizer="adam")
        >>> history = vae.fit(keras.random.uniform((8, 4, 4, 1)), epochs=1, verbose=0)
        >>> sorted(history.history)
        ['kl_loss', 'loss', 'reconstruction_loss']
        >>> vae.sample(3).shape
        TensorShape([3, 4, 4, 1])

    Reference:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Higgins et al.,
        "beta-VAE", ICLR 2017.
    """

    def __init__(self, encoder, decoder, latent_dim, beta=1.0, reconstruction="bernoulli",
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("latent_dim", latent_dim)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ValueError(f"`beta` must be a number >= 0. Received: beta={beta!r}")
        if reconstruction not in _RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {_RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        self.encoder = _common.check_model(encoder, "encoder", num_outputs=2)
        self.decoder = _common.check_model(decoder, "decoder", num_outputs=1)
        for output in getattr(encoder, "outputs", None) or []:
            if output.shape[-1] not in (None, latent_dim):
                raise ValueError(f"The encoder's outputs must have `latent_dim`={latent_dim} "
                                 f"channels. Received: an output of shape {output.shape}")
        self.latent_dim = latent_dim
        self.beta = beta
        self.reconstruction = reconstruction
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = _common.loss_trackers("loss", "reconstruction_loss", "kl_loss")
        _common.mark_built(self, encoder, decoder)

    # === The model ===

    def encode(self, images, training=False):
        """The posterior q(z|x): `(mean, log_var)`, each `[B, latent_dim]`."""
        mean, log_var = self.encoder(images, training=training)
        return mean, log_var

    def reparameterize(self, mean, log_var):
        """A draw `z = mean + exp(log_var / 2) * eps`, `eps ~ N(0, I)`, differentiable in both."""
        eps = keras.random.normal(tf.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + tf.exp(0.5 * log_var) * eps

    def decode(self, z, training=False):
        """Images from latent codes `[B, latent_dim]` (the sigmoid of the logits for
        `"bernoulli"`)."""
        out = self.decoder(z, training=training)
        return tf.sigmoid(out) if self.reconstruction == "bernoulli" else out

    def call(self, inputs, training=False):
        mean, _ = self.encode(inputs, training=training)
        return self.decode(mean, training=training)

    def reconstruct(self, images):
        """The decoded posterior mean of each image `[B, H, W, C]` (no sampling)."""
        return self(images, training=False)

    def sample(self, num_samples):
        """`num_samples` images decoded from z ~ N(0, I)."""
        check_positive_int("num_samples", num_samples)
        z = keras.random.normal((num_samples, self.latent_dim), seed=self.seed_generator)
        return self.decode(tf.cast(z, self.compute_dtype))

    # === Training ===

    def compute_losses(self, images, training=False):
        """`{"loss", "reconstruction_loss", "kl_loss"}`: the batch means of the per-image
        negative ELBO and its two terms (float32)."""
        images = tf.cast(images, tf.float32)
        mean, log_var = self.encode(images, training=training)
        out = self.decoder(self.reparameterize(mean, log_var), training=training)
        out = tf.cast(out, tf.float32)
        if self.reconstruction == "bernoulli":
            nll = tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=out)
        else:
            nll = 0.5 * tf.square(out - images)
        reconstruction = tf.reduce_sum(tf.reshape(nll, [tf.shape(nll)[0], -1]), axis=-1)
        kl = tf.cast(gaussian_kl(tf.cast(mean, tf.float32), tf.cast(log_var, tf.float32)),
                     tf.float32)
        return {
            "loss": tf.reduce_mean(reconstruction + self.beta * kl),
            "reconstruction_loss": tf.reduce_mean(reconstruction),
            "kl_loss": tf.reduce_mean(kl),
        }

    def train_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, training=True)
            scaled_loss = self.optimizer.scale_loss(losses["loss"])
        _common.minimize(self.optimizer, tape, scaled_loss, self.trainable_weights)
        return _common.update_trackers(self.trackers, losses)

    def test_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return _common.update_trackers(self.trackers, self.compute_losses(images))

    @property
    def metrics(self):
        return list(self.trackers.values())

    # === Config ===

    def get_config(self):
        config = {**super().get_config(), "latent_dim": self.latent_dim, "beta": self.beta,
                  "reconstruction": self.reconstruction, "seed": self.seed}
        return _common.serialize_models(config, encoder=self.encoder, decoder=self.decoder)

    @classmethod
    def from_config(cls, config):
        return cls(**_common.deserialize_models(config, "encoder", "decoder"))
