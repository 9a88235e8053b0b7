"""CycleGAN (Zhu et al., 2017): ResNet generators, 70x70 PatchGAN discriminators, the history of
generated images, and a `train_step` with the least-squares, cycle and identity losses."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int
from kcv.layers.normalization import normalization
from kcv.layers.padding import ReflectionPadding2D
from kcv.losses.generative import adversarial_loss, cycle_consistency_loss
from kcv.models.generative import _common

_EPSILON = 1e-5  # of the instance normalization, as PyTorch's InstanceNorm2d


def _instance_norm(name):
    return normalization("instance", epsilon=_EPSILON, name=name)


def _check_input_shape(shape, name, factor=1):
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or any(s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1)
                   for s in shape) or shape[2] is None):
        raise ValueError(f"`{name}` must be (height, width, channels), positive integers (None "
                         f"for a free height or width). Received: {name}={shape!r}")
    if any(s is not None and s % factor for s in shape[:2]):
        raise ValueError(f"`{name}` height and width must be multiples of {factor}. "
                         f"Received: {name}={shape!r}")


def ResNetGenerator(input_shape, filters=64, num_residual_blocks=9, output_channels=None,
                    name="resnet_generator"):
    """Builds CycleGAN's ResNet generator (Johnson et al. 2016's network, as in Zhu et al.).

    `c7s1-f, d2f, d4f, R4f x n, u2f, uf, c7s1-C`: a 7x7 convolution after reflection padding
    3, two stride-2 3x3 convolutions, `n` residual blocks (reflection padding 1, 3x3 conv,
    instance norm, ReLU, reflection padding 1, 3x3 conv, instance norm, add), two stride-2 3x3
    transposed convolutions, and a 7x7 convolution to `output_channels` with tanh. Every
    convolution but the last is followed by instance normalization (`GroupNormalization` with
    one group per channel; learned scale and offset, which PyTorch's `InstanceNorm2d` leaves
    out by default) and ReLU. Zhu et al. use 9 blocks for 256x256 images, 6 for 128x128.

    Args:
        input_shape: `(height, width, channels)`; height and width multiples of 4, or None.
        filters: filters of the first convolution (default 64).
        num_residual_blocks: number of residual blocks (default 9).
        output_channels: channels of the output images (default: those of the input).
        name: model name.

    Returns:
        A functional `keras.Model` from images `[B, H, W, C]` in [-1, 1] to images
        `[B, H, W, output_channels]` in [-1, 1] (float32 output).

    Example:
        >>> ResNetGenerator((32, 32, 3), filters=8, num_residual_blocks=6).output_shape
        (None, 32, 32, 3)

    Reference:
        Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
        Networks", ICCV 2017, appendix 7.2; Johnson et al., "Perceptual Losses for Real-Time
        Style Transfer and Super-Resolution", ECCV 2016.
    """
    _check_input_shape(input_shape, "input_shape", factor=4)
    check_positive_int("filters", filters)
    check_positive_int("num_residual_blocks", num_residual_blocks)
    output_channels = input_shape[2] if output_channels is None else output_channels
    check_positive_int("output_channels", output_channels)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    x = ReflectionPadding2D(3, name="stem_pad")(images)
    x = keras.layers.Conv2D(filters, 7, name="stem_conv")(x)
    x = keras.layers.ReLU(name="stem_relu")(_instance_norm("stem_norm")(x))
    for i, f in enumerate((2 * filters, 4 * filters), start=1):
        x = keras.layers.ZeroPadding2D(1, name=f"down{i}_pad")(x)
        x = keras.layers.Conv2D(f, 3, strides=2, name=f"down{i}_conv")(x)
        x = keras.layers.ReLU(name=f"down{i}_relu")(_instance_norm(f"down{i}_norm")(x))
    for i in range(1, num_residual_blocks + 1):
        y = x
        for j in (1, 2):
            y = ReflectionPadding2D(1, name=f"res{i}_pad{j}")(y)
            y = keras.layers.Conv2D(4 * filters, 3, name=f"res{i}_conv{j}")(y)
            y = _instance_norm(f"res{i}_norm{j}")(y)
            if j == 1:
                y = keras.layers.ReLU(name=f"res{i}_relu")(y)
        x = keras.layers.Add(name=f"res{i}_add")([x, y])
    for i, f in enumerate((2 * filters, filters), start=1):
        x = keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", name=f"up{i}_conv")(x)
        x = keras.layers.ReLU(name=f"up{i}_relu")(_instance_norm(f"up{i}_norm")(x))
    x = ReflectionPadding2D(3, name="head_pad")(x)
    x = keras.layers.Conv2D(output_channels, 7, name="head_conv")(x)
    x = keras.layers.Activation("tanh", dtype="float32", name="output")(x)
    return keras.Model(images, x, name=name)


def PatchGANDiscriminator(input_shape, filters=64, name="patchgan_discriminator"):
    """Builds the 70x70 PatchGAN discriminator of pix2pix and CycleGAN: one score per patch.

    `C64-C128-C256-C512` then a 1-filter convolution, all 4x4 with zero padding 1; the first
    three stride 2, the last two stride 1; instance norm on all but the first and the last,
    LeakyReLU(0.2). Each output unit sees a 70x70 patch of the input (`receptive_field`);
    a 256x256 image gives a 30x30 map of scores (no sigmoid: least-squares scores or logits).

    Args:
        input_shape: `(height, width, channels)`, height and width None or at least 32.
        filters: filters of the first convolution (default 64).
        name: model name.

    Returns:
        A functional `keras.Model` from images `[B, H, W, C]` to scores `[B, H', W', 1]`
        (float32).

    Example:
        >>> PatchGANDiscriminator((256, 256, 3)).output_shape
        (None, 30, 30, 1)

    Reference:
        Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks",
        CVPR 2017; Zhu et al., "CycleGAN", ICCV 2017, appendix 7.2.
    """
    _check_input_shape(input_shape, "input_shape")
    if any(s is not None and s < 32 for s in input_shape[:2]):
        raise ValueError("`input_shape` height and width must be at least 32 for a 70x70 "
                         f"PatchGAN (or None). Received: input_shape={input_shape!r}")
    check_positive_int("filters", filters)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    x = images
    layers = ((filters, 2), (2 * filters, 2), (4 * filters, 2), (8 * filters, 1))
    for i, (f, stride) in enumerate(layers, start=1):
        x = keras.layers.ZeroPadding2D(1, name=f"c{i}_pad")(x)
        x = keras.layers.Conv2D(f, 4, strides=stride, name=f"c{i}_conv")(x)
        if i > 1:
            x = _instance_norm(f"c{i}_norm")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"c{i}_lrelu")(x)
    x = keras.layers.ZeroPadding2D(1, name="score_pad")(x)
    x = keras.layers.Conv2D(1, 4, dtype="float32", name="score")(x)
    return keras.Model(images, x, name=name)


@keras.saving.register_keras_serializable(package="kcv")
class ImageHistory(keras.layers.Layer):
    """A buffer of past generated images that the discriminators train on.

    Each call takes a batch of generated images and returns a batch of the same shape: while
    the buffer is filling, the images themselves (each is stored); once it holds
    `pool_size` images, each image is, with probability 1/2, returned as it is, or else stored
    in place of a random stored image, which is returned instead. The buffer is a
    non-trainable variable, so this runs inside a compiled `train_step` (and is saved with the
    model). Images of one batch are handled together: two that draw the same slot both get
    the image stored before the batch, and one of them is kept.

    Args:
        pool_size: the number of images kept (default 50; 0 returns the images unchanged).
        seed: seed of the random choices (`None`: unseeded).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[B, H, W, C]` with H, W, C known when the layer is built. Output: the same.

    Example:
        >>> history = ImageHistory(pool_size=4)
        >>> history(keras.ops.ones((3, 2, 2, 1))).shape  # filling: returned as given
        TensorShape([3, 2, 2, 1])
        >>> int(history.count)
        3

    Reference:
        Shrivastava et al., "Learning from Simulated and Unsupervised Images through
        Adversarial Training", CVPR 2017, section 2.3; Zhu et al., "CycleGAN", ICCV 2017,
        section 4.
    """

    def __init__(self, pool_size=50, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise ValueError(f"`pool_size` must be an integer >= 0. Received: "
                             f"pool_size={pool_size!r}")
        self.pool_size = pool_size
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if len(input_shape) != 4 or any(s is None for s in input_shape[1:]):
            raise ValueError("ImageHistory needs images [B, H, W, C] with known H, W, C. "
                             f"Received: input_shape={tuple(input_shape)}")
        self.images = self.add_weight(shape=(self.pool_size, *input_shape[1:]),
                                      initializer="zeros", trainable=False, name="images")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                     trainable=False, name="count")

    def call(self, inputs):
        if self.pool_size == 0:
            return inputs
        images = tf.cast(inputs, self.images.dtype)
        batch = tf.shape(images)[0]
        stored_before = self.count
        slots = stored_before + tf.range(batch)  # where images go while the buffer fills
        filling = slots < self.pool_size
        swap = tf.logical_and(tf.logical_not(filling),
                              keras.random.uniform((batch,), seed=self.seed_generator) < 0.5)
        swap = tf.logical_and(swap, stored_before > 0)
        # Distinct random slots among those stored before this batch: a random permutation of
        # them (the others sort last), cycled if more images swap than were stored.
        keys = tf.where(tf.range(self.pool_size) < stored_before,
                        keras.random.uniform((self.pool_size,), seed=self.seed_generator), 2.0)
        permutation = tf.argsort(keys)  # int32
        random_slots = tf.gather(permutation, tf.range(batch) % tf.maximum(stored_before, 1))
        ids = tf.where(filling, slots, random_slots)
        stored = tf.gather(self.images, tf.minimum(ids, self.pool_size - 1))
        out = tf.where(swap[:, None, None, None], stored, images)
        write = tf.logical_or(filling, swap)
        self.images.assign(tf.tensor_scatter_nd_update(
            self.images, tf.boolean_mask(ids, write)[:, None], tf.boolean_mask(images, write)))
        self.count.assign(tf.minimum(self.count + batch, self.pool_size))
        return tf.cast(out, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "seed": self.seed}


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="kcv")
class CycleGAN(_common.AdversarialModel):
    """Two generators G: A -> B and F: B -> A, two discriminators D_A and D_B, trained on
    unpaired images with cycle consistency.

    Per batch `(a, b)` (`fit(a, b)` or a dataset of `(a, b)` pairs; least-squares adversarial
    loss `adversarial_loss(..., mode="least_squares")`, L1 `cycle_consistency_loss`, all
    averaged over the batch), first a generator step on

        g_loss = adv(1, D_B(G(a))) + adv(1, D_A(F(b)))
                 + cycle_weight * (L1(a, F(G(a))) + L1(b, G(F(b))))
                 + identity_weight * cycle_weight * (L1(b, G(b)) + L1(a, F(a)))

    then a discriminator step on `d_a_loss + d_b_loss`, with
    `d_a_loss = 0.5 * (adv(1, D_A(a)) + adv(0, D_A(history_a(F(b)))))` (likewise for B), the
    generated images drawn from an `ImageHistory` of `pool_size` images. `fit` logs `g_loss`,
    its terms `adversarial_loss`, `cycle_loss` and `identity_loss` (unweighted), and
    `d_a_loss`, `d_b_loss`. `compile(generator_optimizer, discriminator_optimizer)` (default
    Adam(2e-4, 0.5), as Zhu et al.). Calling the model on `[a, b]` returns `[G(a), F(b)]`.

    Args:
        generator_ab: G, a `keras.Model` from domain-A images to domain-B images (static
            height, width and channels: the image histories are built from them).
        generator_ba: F, from domain B to domain A.
        discriminator_a: D_A, scores (a map, e.g. `PatchGANDiscriminator`) of domain-A images.
        discriminator_b: D_B, of domain-B images.
        cycle_weight: lambda of the cycle loss (default 10).
        identity_weight: weight of the identity loss relative to `cycle_weight` (default 0.5,
            as Zhu et al. for painting -> photo, section 5.2, and their code's default; 0 turns
            it off; needs A and B with the same channels). It pulls G towards the identity on
            B images and F on A images, so it suits translations that keep colours; it fights
            one that changes them everywhere (e.g. an inversion, where it leads to hidden,
            unreadable translations: see examples/cyclegan.py).
        pool_size: images in each history (default 50).
        seed: seed of the histories' random choices.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
        >>> def g():
        ...     return ResNetGenerator((32, 32, 1), filters=4, num_residual_blocks=1)
        >>> def d():
        ...     return PatchGANDiscriminator((32, 32, 1), filters=4)
        >>> cyclegan = CycleGAN(g(), g(), d(), d())
        >>> cyclegan.compile(run_eagerly=True)  # one step: not worth tracing; omit to train
        >>> a = keras.random.uniform((2, 32, 32, 1), -1, 1)
        >>> history = cyclegan.fit(a, -a, epochs=1, verbose=0)
        >>> sorted(history.history)
        ['adversarial_loss', 'cycle_loss', 'd_a_loss', 'd_b_loss', 'g_loss', 'identity_loss']

    Reference:
        Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
        Networks", ICCV 2017; Mao et al., "Least Squares Generative Adversarial Networks",
        ICCV 2017; Shrivastava et al., "Learning from Simulated and Unsupervised Images
        through Adversarial Training", CVPR 2017.
    """

    def __init__(self, generator_ab, generator_ba, discriminator_a, discriminator_b,
                 cycle_weight=10.0, identity_weight=0.5, pool_size=50, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.generator_ab = _common.check_model(generator_ab, "generator_ab", num_outputs=1)
        self.generator_ba = _common.check_model(generator_ba, "generator_ba", num_outputs=1)
        self.discriminator_a = _common.check_model(discriminator_a, "discriminator_a", 1)
        self.discriminator_b = _common.check_model(discriminator_b, "discriminator_b", 1)
        self.cycle_weight = _number(cycle_weight, "cycle_weight")
        self.identity_weight = _number(identity_weight, "identity_weight")
        self.pool_size = pool_size
        self.seed = seed
        shape_a, shape_b = (tuple(g.output_shape[1:]) for g in (generator_ba, generator_ab))
        for name, shape in (("generator_ba", shape_a), ("generator_ab", shape_b)):
            if any(s is None for s in shape):
                raise ValueError(f"`{name}` must give images of a static shape (the image "
                                 f"history stores them). Received: output shape {shape}")
        if identity_weight and shape_a[-1] != shape_b[-1]:
            raise ValueError("The identity loss needs domains with the same channels; pass "
                             f"identity_weight=0. Received: A images {shape_a}, B {shape_b}")
        self.history_a = ImageHistory(pool_size, seed=seed, name="history_a")
        self.history_b = ImageHistory(pool_size, seed=None if seed is None else seed + 1,
                                      name="history_b")
        self.history_a.build((None, *shape_a))
        self.history_b.build((None, *shape_b))
        self.trackers = _common.loss_trackers("g_loss", "adversarial_loss", "cycle_loss",
                                              "identity_loss", "d_a_loss", "d_b_loss")
        _common.mark_built(self, generator_ab, generator_ba, discriminator_a, discriminator_b)

    @property
    def generator_variables(self):
        return self.generator_ab.trainable_variables + self.generator_ba.trainable_variables

    @property
    def discriminator_variables(self):
        return (self.discriminator_a.trainable_variables
                + self.discriminator_b.trainable_variables)

    def call(self, inputs, training=False):
        real_a, real_b = inputs
        return [self.generator_ab(real_a, training=training),
                self.generator_ba(real_b, training=training)]

    # === Losses ===

    @staticmethod
    def _mean(per_sample):
        return tf.reduce_mean(tf.cast(per_sample, tf.float32))

    def _adversarial(self, label, scores):
        return self._mean(adversarial_loss(label, tf.cast(scores, tf.float32),
                                           mode="least_squares"))

    def _l1(self, real, generated):
        return self._mean(cycle_consistency_loss(tf.cast(real, tf.float32),
                                                 tf.cast(generated, tf.float32)))

    def generator_losses(self, real_a, real_b, training=False):
        """The generators' loss and its terms for a batch, with the translated images.

        Returns:
            `(losses, fake_b, fake_a)`: `losses` holds `g_loss`, `adversarial_loss`,
            `cycle_loss` and `identity_loss` (float32 scalars); `fake_b = G(a)`,
            `fake_a = F(b)`.
        """
        fake_b = self.generator_ab(real_a, training=training)
        fake_a = self.generator_ba(real_b, training=training)
        adversarial = (self._adversarial(1.0, self.discriminator_b(fake_b, training=training))
                       + self._adversarial(1.0, self.discriminator_a(fake_a, training=training)))
        cycle = (self._l1(real_a, self.generator_ba(fake_b, training=training))
                 + self._l1(real_b, self.generator_ab(fake_a, training=training)))
        identity = tf.constant(0.0)
        if self.identity_weight:
            identity = (self._l1(real_b, self.generator_ab(real_b, training=training))
                        + self._l1(real_a, self.generator_ba(real_a, training=training)))
        total = (adversarial + self.cycle_weight * cycle
                 + self.identity_weight * self.cycle_weight * identity)
        losses = {"g_loss": total, "adversarial_loss": adversarial, "cycle_loss": cycle,
                  "identity_loss": identity}
        return losses, fake_b, fake_a

    def discriminator_loss(self, discriminator, real, fake, training=False):
        """`0.5 * (adv(1, D(real)) + adv(0, D(fake)))`, LSGAN's loss halved as Zhu et al."""
        return 0.5 * (self._adversarial(1.0, discriminator(real, training=training))
                      + self._adversarial(0.0, discriminator(fake, training=training)))

    # === Training ===

    def train_step(self, data):
        real_a, real_b, _ = keras.utils.unpack_x_y_sample_weight(data)

        # Generator step: fool both discriminators, keep the cycles and identities.
        with tf.GradientTape() as tape:
            losses, fake_b, fake_a = self.generator_losses(real_a, real_b, training=True)
            scaled = self.generator_optimizer.scale_loss(losses["g_loss"])
        _common.minimize(self.generator_optimizer, tape, scaled, self.generator_variables)

        # Discriminator step, on generated images drawn from the histories.
        fake_a = self.history_a(tf.stop_gradient(fake_a))
        fake_b = self.history_b(tf.stop_gradient(fake_b))
        with tf.GradientTape() as tape:
            losses["d_a_loss"] = self.discriminator_loss(self.discriminator_a, real_a, fake_a,
                                                         training=True)
            losses["d_b_loss"] = self.discriminator_loss(self.discriminator_b, real_b, fake_b,
                                                         training=True)
            scaled = self.discriminator_optimizer.scale_loss(losses["d_a_loss"]
                                                             + losses["d_b_loss"])
        _common.minimize(self.discriminator_optimizer, tape, scaled,
                         self.discriminator_variables)
        return _common.update_trackers(self.trackers, losses)

    @property
    def metrics(self):
        return list(self.trackers.values())

    # === Config ===

    def get_config(self):
        config = {**super().get_config(), "cycle_weight": self.cycle_weight,
                  "identity_weight": self.identity_weight, "pool_size": self.pool_size,
                  "seed": self.seed}
        return _common.serialize_models(
            config, generator_ab=self.generator_ab, generator_ba=self.generator_ba,
            discriminator_a=self.discriminator_a, discriminator_b=self.discriminator_b)

    @classmethod
    def from_config(cls, config):
        return cls(**_common.deserialize_models(config, "generator_ab", "generator_ba",
                                                "discriminator_a", "discriminator_b"))
