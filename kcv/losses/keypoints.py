"""The masked L2 loss of multi-stage pose networks, applied at every stage.

OpenPose (Cao et al. 2017) supervises each stage t's confidence maps S^t and part affinity
fields L^t with an L2 loss weighted per pixel by a binary mask W, 0 where the annotation is
missing (a person without keypoints, a keypoint not labelled), so that a correct prediction
there is not penalised; supervising every stage ("intermediate supervision", Wei et al. 2016)
replenishes the gradient of the early stages.

The weights travel with the targets: `y_true` is `[B, ..., C]` (all weights 1), or the targets
followed along the last axis by their weights: `[B, ..., 2C]` (one weight per channel) or
`[B, ..., C + 1]` (one weight per pixel, shared by the channels), with `C` read from `y_pred`.
"""

import keras
import tensorflow as tf

from kcv.losses._base import ArgumentLoss

__all__ = ["MaskedL2Loss", "masked_l2_loss", "stage_losses"]


def _split_weights(y_true, channels):
    """`(targets [B, ..., C], weights broadcastable to them)` from `y_true`."""
    given = y_true.shape[-1]
    if given == channels:
        return y_true, tf.ones_like(y_true[..., :1])
    if given == 2 * channels:
        return y_true[..., :channels], y_true[..., channels:]
    if given == channels + 1:
        return y_true[..., :channels], y_true[..., channels:]
    raise ValueError(
        f"`y_true` must have C, 2C (targets then per-channel weights) or C + 1 (targets then a "
        f"per-pixel weight) channels, C = {channels} being `y_pred`'s. Received: "
        f"y_true.shape={y_true.shape}")


def masked_l2_loss(y_true, y_pred, normalize=False):
    """The weighted squared error of one stage's maps, one value per sample.

    Formula:
        Over the pixels p and channels c of sample b, with W the weights (1 when not given):

            loss[b] = sum_{p,c} W[b,p,c] * (y_pred[b,p,c] - y_true[b,p,c])^2

        (Cao et al., eqs. 3-4), divided by the number of pixels times channels when
        `normalize=True` (a mean, independent of the map size).

    Args:
        y_true: the targets `[B, ..., C]`, or the targets followed along the last axis by
            their weights, `[B, ..., 2C]` per channel or `[B, ..., C + 1]` per pixel.
        y_pred: the predicted maps `[B, ..., C]` (e.g. `[B, H, W, K]` heatmaps or
            `[B, H, W, 2L]` fields).
        normalize: divide by the number of elements per sample (default False: the paper's sum).

    Returns:
        float32 `[B]` (the float dtype of `y_pred`).

    Example:
        >>> y_pred = [[[[1.0], [3.0]]]]                     # one 1x2 map
        >>> y_true = [[[[0.0, 1.0], [0.0, 0.0]]]]           # targets 0, weights 1 and 0
        >>> masked_l2_loss(y_true, y_pred).numpy()          # 1 * 1^2 + 0 * 3^2
        array([1.], dtype=float32)

    Reference:
        Cao, Simon, Wei & Sheikh, "Realtime Multi-Person 2D Pose Estimation using Part Affinity
        Fields", CVPR 2017, section 2.1; Wei, Ramakrishna, Kanade & Sheikh, "Convolutional Pose
        Machines", CVPR 2016.
    """
    with tf.name_scope("masked_l2_loss"):
        y_pred = tf.convert_to_tensor(y_pred)
        dtype = y_pred.dtype if y_pred.dtype.is_floating else tf.float32
        y_true = tf.cast(tf.convert_to_tensor(y_true), tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        if y_pred.shape.rank is not None and y_pred.shape.rank < 2:
            raise ValueError(f"`y_pred` must be [B, ..., C]. Received: y_pred.shape={y_pred.shape}")
        targets, weights = _split_weights(y_true, y_pred.shape[-1])
        if not targets.shape.is_compatible_with(y_pred.shape):
            raise ValueError(f"`y_true`'s targets {targets.shape} and `y_pred` {y_pred.shape} "
                             "must have the same shape.")
        axes = list(range(1, y_pred.shape.rank))
        error = weights * tf.square(y_pred - targets)
        loss = tf.reduce_mean(error, axis=axes) if normalize else tf.reduce_sum(error, axis=axes)
        return tf.cast(loss, dtype)


@keras.saving.register_keras_serializable(package="kcv")
class MaskedL2Loss(ArgumentLoss):
    """The weighted squared error of pose maps per sample, reduced over the batch.

    See `masked_l2_loss`; give one per output of a multi-stage model (`stage_losses`) to
    supervise every stage.

    Args:
        normalize: divide each sample's sum by its number of elements (default False).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)])
        >>> model.compile("adam", loss=MaskedL2Loss())

    Reference:
        Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields",
        CVPR 2017.
    """

    _function = staticmethod(masked_l2_loss)

    def __init__(self, normalize=False, reduction="sum_over_batch_size", name="masked_l2_loss",
                 dtype=None):
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool. Received: normalize={normalize!r}")
        super().__init__(reduction=reduction, name=name, dtype=dtype, normalize=normalize)


def stage_losses(output_names, normalize=False):
    """One `MaskedL2Loss` per model output, for `model.compile(loss=...)`.

    Args:
        output_names: the model's output names (`model.output_names`), e.g. the
            `stage{t}_heatmaps` / `stage{t}_pafs` of `kcv.models.OpenPose`.
        normalize: as `MaskedL2Loss`.

    Returns:
        `{name: MaskedL2Loss}`.

    Example:
        >>> sorted(stage_losses(["stage1_pafs", "stage1_heatmaps"]))
        ['stage1_heatmaps', 'stage1_pafs']
    """
    names = list(output_names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"`output_names` must be a non-empty list of strings. Received: "
                         f"output_names={output_names!r}")
    return {n: MaskedL2Loss(normalize=normalize, name=f"{n}_loss") for n in names}
