"""Losses of the generative models: the Gaussian KL term of the VAE, the GAN adversarial losses
(non-saturating and least-squares) and CycleGAN's cycle-consistency loss."""

import keras
import tensorflow as tf

from kcv.losses._base import ArgumentLoss
from kcv.losses._targets import check_same_shape

__all__ = [
    "AdversarialLoss",
    "CycleConsistencyLoss",
    "adversarial_loss",
    "cycle_consistency_loss",
    "gaussian_kl",
]

_MODES = ("non_saturating", "least_squares")


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")


def _per_sample_mean(values):
    """The mean over every axis but the first: one value per sample."""
    return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=-1)


def _float_dtype(tensor):
    return tensor.dtype if tensor.dtype.is_floating else tf.float32


def gaussian_kl(mean, log_var):
    """KL divergence of `N(mean, exp(log_var))` (diagonal) from `N(0, I)`, one value per sample.

    Formula:
        `KL(q || p) = -0.5 * sum_j (1 + log_var_j - mean_j^2 - exp(log_var_j))` over the latent
        axis (the last one), the closed form of Kingma & Welling (2014), appendix B.

    Args:
        mean: float Tensor `[B, latent_dim]` (or `[B, ..., latent_dim]`), the mean of q(z|x).
        log_var: float Tensor of the same shape, the log-variance of q(z|x).

    Returns:
        float Tensor `[B]` (the input shape without the last axis), in the input dtype; the
        sum is taken in float32.

    Example:
        >>> gaussian_kl([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]).numpy()
        array([0. , 0.5], dtype=float32)

    Reference:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, appendix B.
    """
    mean, log_var = tf.convert_to_tensor(mean), tf.convert_to_tensor(log_var)
    if not mean.shape.is_compatible_with(log_var.shape):
        raise ValueError("`mean` and `log_var` must have the same shape. Received: "
                         f"mean.shape={mean.shape}, log_var.shape={log_var.shape}")
    dtype = _float_dtype(mean)
    mean, log_var = tf.cast(mean, tf.float32), tf.cast(log_var, tf.float32)
    kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - 1.0 - log_var, axis=-1)
    return tf.cast(kl, dtype)


def adversarial_loss(y_true, y_pred, mode="non_saturating", from_logits=True):
    """GAN loss of discriminator outputs against the label they should have, one value per sample.

    The discriminator minimises `adversarial_loss(1, D(x)) + adversarial_loss(0, D(G(z)))`;
    the generator minimises `adversarial_loss(1, D(G(z)))`, which with
    `mode="non_saturating"` is Goodfellow et al.'s non-saturating generator loss
    `-log D(G(z))` (instead of the saturating `log(1 - D(G(z)))`). Outputs with spatial axes
    (a PatchGAN's map of patch scores) are averaged per sample.

    Formula:
        With `d = sigmoid(y_pred)` (`y_pred` itself when `from_logits=False`), per output unit:

            non_saturating: -(y_true * log(d) + (1 - y_true) * log(1 - d))
            least_squares:  (y_pred - y_true)^2   (`y_pred` used as is, no sigmoid)

        then the mean over all axes but the first. Least squares with labels 0 (fake) and
        1 (real) is LSGAN's 0-1 coding (Mao et al. 2017, eq. 2, without the factor 1/2).

    Args:
        y_true: float Tensor broadcastable to `y_pred` (e.g. `tf.ones_like(y_pred)`), the
            labels: 1 real, 0 fake.
        y_pred: float Tensor `[B, ...]`, the discriminator's outputs.
        mode: "non_saturating" (binary crossentropy) or "least_squares" (LSGAN).
        from_logits: for "non_saturating", whether `y_pred` are logits (default) or
            probabilities; "least_squares" ignores it.

    Returns:
        float Tensor `[B]` in the dtype of `y_pred`; computed in float32.

    Example:
        >>> round(float(adversarial_loss([[1.0]], [[0.0]])[0]), 5)  # -log(sigmoid(0))
        0.69315
        >>> adversarial_loss([[0.0]], [[0.5]], mode="least_squares").numpy()
        array([0.25], dtype=float32)

    Reference:
        Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, section 3; Mao et al.,
        "Least Squares Generative Adversarial Networks", ICCV 2017.
    """
    _check_mode(mode)
    y_pred = tf.convert_to_tensor(y_pred)
    dtype = _float_dtype(y_pred)
    y_pred = tf.cast(y_pred, tf.float32)
    y_true = tf.broadcast_to(tf.cast(y_true, tf.float32), tf.shape(y_pred))
    if mode == "least_squares":
        values = tf.square(y_pred - y_true)
    elif from_logits:
        values = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
    else:
        values = keras.losses.binary_crossentropy(y_true[..., None], y_pred[..., None])
    return tf.cast(_per_sample_mean(values), dtype)


def cycle_consistency_loss(real, reconstructed):
    """Mean absolute error between images and their round-trip reconstructions, per image.

    Formula:
        `loss[b] = mean_{h, w, c} |reconstructed[b] - real[b]|`, the L1 cycle loss of Zhu et
        al. (2017), eq. 2, with `reconstructed = F(G(real))`.

    Args:
        real: float Tensor `[B, H, W, C]`, the input images.
        reconstructed: float Tensor of the same shape, the images after A -> B -> A.

    Returns:
        float Tensor `[B]` in the dtype of `reconstructed`; computed in float32.

    Example:
        >>> cycle_consistency_loss([[[[0.0], [1.0]]]], [[[[0.5], [0.0]]]]).numpy()
        array([0.75], dtype=float32)

    Reference:
        Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
        Networks", ICCV 2017, eq. 2.
    """
    real, reconstructed = tf.convert_to_tensor(real), tf.convert_to_tensor(reconstructed)
    check_same_shape(real, reconstructed)
    dtype = _float_dtype(reconstructed)
    diff = tf.abs(tf.cast(reconstructed, tf.float32) - tf.cast(real, tf.float32))
    return tf.cast(_per_sample_mean(diff), dtype)


@keras.saving.register_keras_serializable(package="kcv")
class AdversarialLoss(ArgumentLoss):
    """GAN loss of discriminator outputs against their labels. See `adversarial_loss`.

    Formula:
        `loss[b]` = mean over the outputs of sample b of the binary crossentropy
        (`mode="non_saturating"`) or of `(y_pred - y_true)^2` (`mode="least_squares"`), then
        the Keras reduction over the batch.

    Args:
        mode: "non_saturating" (default) or "least_squares".
        from_logits: whether `y_pred` are logits (default True; "non_saturating" only).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = AdversarialLoss(mode="least_squares")
        >>> float(loss([[1.0], [0.0]], [[0.5], [0.5]]))
        0.25

    Reference:
        Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014; Mao et al., "Least
        Squares Generative Adversarial Networks", ICCV 2017.
    """

    _function = staticmethod(adversarial_loss)

    def __init__(self, mode="non_saturating", from_logits=True,
                 reduction="sum_over_batch_size", name="adversarial_loss", dtype=None):
        _check_mode(mode)
        super().__init__(reduction=reduction, name=name, dtype=dtype, mode=mode,
                         from_logits=from_logits)


@keras.saving.register_keras_serializable(package="kcv")
class CycleConsistencyLoss(ArgumentLoss):
    """Mean absolute error per image, then reduced. See `cycle_consistency_loss`.

    Formula:
        `loss[b] = mean_{h, w, c} |y_pred[b] - y_true[b]|`, then the Keras reduction.

    Args:
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> float(CycleConsistencyLoss()([[[[0.0], [1.0]]]], [[[[0.5], [0.0]]]]))
        0.75

    Reference:
        Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
        Networks", ICCV 2017, eq. 2.
    """

    _function = staticmethod(cycle_consistency_loss)

    def __init__(self, reduction="sum_over_batch_size", name="cycle_consistency_loss",
                 dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
