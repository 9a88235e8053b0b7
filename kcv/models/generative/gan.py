"""GAN (Goodfellow et al., 2014) with DCGAN reference networks (Radford et al., 2016), trained by a
readable `train_step` with the non-saturating or the least-squares (LSGAN) loss."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int
from kcv.losses.generative import _MODES, adversarial_loss
from kcv.models.generative import _common


def _check_image_shape(shape, name, factor):
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
        raise ValueError(f"`{name}` must be (height, width, channels) positive integers. "
                         f"Received: {name}={shape!r}")
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(f"`{name}` height and width must be multiples of {factor} "
                         f"(2 ** the number of resolution changes). Received: {name}={shape!r}")


def DCGANGenerator(latent_dim, output_shape, filters=64, num_upsamplings=2,
                   name="dcgan_generator"):
    """Builds a DCGAN generator: z -> dense -> (transposed conv, batch norm, ReLU)* -> tanh.

    A dense projection to a `[H / 2^n, W / 2^n, filters * 2^(n-1)]` map, then `n` stride-2
    4x4 transposed convolutions halving the filters each time (batch norm + ReLU after all but
    the last), the last one to `channels` with tanh: images in [-1, 1].

    Args:
        latent_dim: size of z.
        output_shape: `(height, width, channels)` of the images; height and width multiples
            of `2 ** num_upsamplings`.
        filters: filters of the last hidden layer (default 64).
        num_upsamplings: number of stride-2 transposed convolutions (default 2).
        name: model name.

    Returns:
        A functional `keras.Model` from `[B, latent_dim]` to `[B, H, W, C]` (float32 output).

    Example:
        >>> DCGANGenerator(16, (8, 8, 1), filters=8).output_shape
        (None, 8, 8, 1)

    Reference:
        Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
        Generative Adversarial Networks", ICLR 2016.
    """
    check_positive_int("latent_dim", latent_dim)
    check_positive_int("filters", filters)
    check_positive_int("num_upsamplings", num_upsamplings)
    _check_image_shape(output_shape, "output_shape", 2**num_upsamplings)
    height, width, channels = output_shape
    scale = 2**num_upsamplings

    # === Functional Model ===
    z = keras.Input((latent_dim,), name="z")
    width0 = filters * 2 ** (num_upsamplings - 1)
    x = keras.layers.Dense(height // scale * width // scale * width0, use_bias=False,
                           name="project")(z)
    x = keras.layers.Reshape((height // scale, width // scale, width0), name="reshape")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    for i in range(num_upsamplings - 1):
        f = filters * 2 ** (num_upsamplings - 2 - i)
        x = keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=False,
                                         name=f"up{i + 1}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"up{i + 1}_bn")(x)
        x = keras.layers.ReLU(name=f"up{i + 1}_relu")(x)
    x = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                     name="output_conv")(x)
    x = keras.layers.Activation("tanh", dtype="float32", name="output")(x)
    return keras.Model(z, x, name=name)


def DCGANDiscriminator(input_shape, filters=64, num_downsamplings=2,
                       name="dcgan_discriminator"):
    """Builds a DCGAN discriminator: (stride-2 conv, batch norm, LeakyReLU 0.2)* -> one logit.

    `n` stride-2 4x4 convolutions doubling the filters from `filters` (no batch norm on the
    first, as in DCGAN), LeakyReLU(0.2), then a dense layer to one logit per image.

    Args:
        input_shape: `(height, width, channels)`, height and width multiples of
            `2 ** num_downsamplings`.
        filters: filters of the first convolution (default 64).
        num_downsamplings: number of stride-2 convolutions (default 2).
        name: model name.

    Returns:
        A functional `keras.Model` from `[B, H, W, C]` to logits `[B, 1]` (float32).

    Example:
        >>> DCGANDiscriminator((8, 8, 1), filters=8).output_shape
        (None, 1)

    Reference:
        Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
        Generative Adversarial Networks", ICLR 2016.
    """
    check_positive_int("filters", filters)
    check_positive_int("num_downsamplings", num_downsamplings)
    _check_image_shape(input_shape, "input_shape", 2**num_downsamplings)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    x = images
    for i in range(num_downsamplings):
        x = keras.layers.Conv2D(filters * 2**i, 4, strides=2, padding="same", use_bias=i == 0,
                                name=f"down{i + 1}_conv")(x)
        if i:
            x = keras.layers.BatchNormalization(name=f"down{i + 1}_bn")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"down{i + 1}_lrelu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1, dtype="float32", name="logit")(x)
    return keras.Model(images, x, name=name)


@keras.saving.register_keras_serializable(package="kcv")
class GAN(_common.AdversarialModel):
    """A generator and a discriminator trained against each other, one step each per batch.

    Per batch of real images x and noise z ~ N(0, I) (`adversarial_loss` with `mode`):

        d_loss = mean_b [adversarial_loss(1, D(x)) + adversarial_loss(0, D(G(z)))]
        g_loss = mean_b adversarial_loss(1, D(G(z')))      (fresh z')

    first a discriminator step on `d_loss`, then a generator step on `g_loss`. With
    `mode="non_saturating"` (default) this is Goodfellow et al.'s GAN with the non-saturating
    generator loss `-log D(G(z))`; with `"least_squares"` it is LSGAN (the discriminator's
    outputs are then scores, not logits). `fit(images)` logs `d_loss` and `g_loss`.
    `compile(generator_optimizer, discriminator_optimizer)` (default Adam(2e-4, 0.5)).
    Calling the model on z returns `generator(z)`; `sample(n)` draws z itself.

    Args:
        generator: a `keras.Model` from `[B, latent_dim]` to images.
        discriminator: a `keras.Model` from images to one logit (or score) per image `[B, 1]`,
            or a map of them (PatchGAN).
        latent_dim: size of z.
        mode: "non_saturating" or "least_squares".
        seed: seed of the noise (`None`: unseeded).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
        >>> gan = GAN(DCGANGenerator(8, (8, 8, 1), filters=4),
        ...           DCGANDiscriminator((8, 8, 1), filters=4), latent_dim=8)
        >>> gan.compile(run_eagerly=True)  # one step: not worth tracing; omit to train
        >>> history = gan.fit(keras.random.uniform((8, 8, 8, 1), -1, 1), epochs=1, verbose=0)
        >>> sorted(history.history)
        ['d_loss', 'g_loss']

    Reference:
        Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014; Radford et al., "DCGAN",
        ICLR 2016; Mao et al., "Least Squares Generative Adversarial Networks", ICCV 2017.
    """

    def __init__(self, generator, discriminator, latent_dim, mode="non_saturating", seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        check_positive_int("latent_dim", latent_dim)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        self.generator = _common.check_model(generator, "generator", num_outputs=1)
        self.discriminator = _common.check_model(discriminator, "discriminator", num_outputs=1)
        self.latent_dim = latent_dim
        self.mode = mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = _common.loss_trackers("d_loss", "g_loss")
        _common.mark_built(self, generator, discriminator)

    @property
    def generator_variables(self):
        return self.generator.trainable_variables

    @property
    def discriminator_variables(self):
        return self.discriminator.trainable_variables

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def sample(self, num_samples):
        """`num_samples` generated images."""
        check_positive_int("num_samples", num_samples)
        return self.generator(self._noise(num_samples), training=False)

    def _noise(self, batch_size):
        z = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        return tf.cast(z, self.compute_dtype)

    def _loss(self, label, outputs):
        """Batch mean of `adversarial_loss(label, outputs)` in float32."""
        outputs = tf.cast(outputs, tf.float32)
        return tf.reduce_mean(adversarial_loss(label, outputs, mode=self.mode))

    def train_step(self, data):
        real, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(real)[0]

        # Discriminator step: real images are labelled 1, generated ones 0.
        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(batch_size), training=True)
            d_loss = (self._loss(1.0, self.discriminator(real, training=True))
                      + self._loss(0.0, self.discriminator(fake, training=True)))
            scaled = self.discriminator_optimizer.scale_loss(d_loss)
        _common.minimize(self.discriminator_optimizer, tape, scaled, self.discriminator_variables)

        # Generator step: make the discriminator label generated images 1 (non-saturating).
        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(batch_size), training=True)
            g_loss = self._loss(1.0, self.discriminator(fake, training=True))
            scaled = self.generator_optimizer.scale_loss(g_loss)
        _common.minimize(self.generator_optimizer, tape, scaled, self.generator_variables)

        return _common.update_trackers(self.trackers, {"d_loss": d_loss, "g_loss": g_loss})

    @property
    def metrics(self):
        return list(self.trackers.values())

    # === Config ===

    def get_config(self):
        config = {**super().get_config(), "latent_dim": self.latent_dim, "mode": self.mode,
                  "seed": self.seed}
        return _common.serialize_models(config, generator=self.generator,
                                        discriminator=self.discriminator)

    @classmethod
    def from_config(cls, config):
        return cls(**_common.deserialize_models(config, "generator", "discriminator"))
