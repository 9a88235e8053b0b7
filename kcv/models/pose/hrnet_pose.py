"""HRNet for top-down pose estimation (Sun et al., CVPR 2019): heatmaps from the
high-resolution branch, decoded by argmax plus a quarter-pixel offset."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int
from kcv.models.segmentation.hrnet import hrnet_branches

__all__ = ["HRNetPose", "decode_heatmaps"]


def HRNetPose(input_shape, num_keypoints, width=32, num_modules=(1, 1, 4, 3), num_blocks=4,
              stem_filters=64, name="hrnet_pose"):
    """Builds HRNet's pose network: one heatmap per keypoint at 1/4 of the input resolution.

    The stem and the four stages are those of `kcv.models.HRNet` (parallel branches at
    strides 4, 8, 16 and 32, exchanging information in every module); the last exchange unit
    feeds only the highest-resolution branch, from which a 1x1 convolution regresses the
    `num_keypoints` heatmaps (the paper's head, trained with an MSE loss against Gaussian
    targets, e.g. `kcv.data.keypoints.confidence_maps` at stride 4 and `kcv.losses.MaskedL2Loss`
    with `normalize=True`). Top-down: the input is one person's crop (the paper: 256 x 192).
    Decode with `decode_heatmaps`.

    Args:
        input_shape: `(H, W, C)`, H and W known and divisible by 32.
        num_keypoints: `K`, heatmap channels (17 for COCO).
        width: channels of the highest-resolution branch (HRNet-W32: 32, W48: 48).
        num_modules, num_blocks, stem_filters: as `kcv.models.HRNet` (the paper's defaults).
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` to heatmaps `[B, H/4, W/4, K]` (linear, float32
        under mixed precision); map pixel (i, j) is the input point (4j, 4i).

    Example:
        >>> model = HRNetPose((64, 64, 3), 17, width=4, num_modules=(1, 1, 1, 1), num_blocks=1,
        ...                   stem_filters=8)
        >>> model.output.shape
        (None, 16, 16, 17)

    Reference:
        Sun, Xiao, Liu & Wang, "Deep High-Resolution Representation Learning for Human Pose
        Estimation", CVPR 2019.
    """
    # === Validate ===
    check_positive_int("num_keypoints", num_keypoints)
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape!r}")

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    branches = hrnet_branches(inputs, width, num_modules, num_blocks, stem_filters)
    x = keras.layers.Conv2D(num_keypoints, 1, name="heatmaps_conv")(branches[0])
    x = keras.layers.Activation("linear", dtype="float32", name="heatmaps")(x)
    return keras.Model(inputs, x, name=name)


def decode_heatmaps(heatmaps, stride=4):
    """Keypoints from top-down heatmaps: the argmax, moved a quarter pixel towards the higher
    neighbour (no DARK/Taylor refinement), as the HRNet paper's code decodes them.

    Formula:
        With (px, py) the argmax of keypoint k's map h, when 1 < px < W - 1 and
        1 < py < H - 1 (the reference code's condition):

            x = px + 0.25 * sign(h[py, px + 1] - h[py, px - 1])
            y = py + 0.25 * sign(h[py + 1, px] - h[py - 1, px])

        then (x, y) * stride in input pixels; the score is h[py, px].

    Args:
        heatmaps: float `[B, H, W, K]`.
        stride: input pixels per map pixel (4 for `HRNetPose`).

    Returns:
        float32 `[B, K, 3]`: (x, y, score) per keypoint.

    Example:
        >>> heat = np.zeros((1, 5, 5, 1), np.float32)
        >>> heat[0, 2, 2, 0], heat[0, 2, 3, 0], heat[0, 3, 2, 0] = 1.0, 0.5, 0.2
        >>> decode_heatmaps(heat, stride=4)[0, 0].numpy()  # (2.25, 2.25) * 4
        array([9., 9., 1.], dtype=float32)

    Reference:
        Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation",
        CVPR 2019 (github.com/leoxiaobin/deep-high-resolution-net.pytorch, `get_final_preds`).
    """
    with tf.name_scope("decode_heatmaps"):
        heatmaps = tf.cast(tf.convert_to_tensor(heatmaps), tf.float32)
        if heatmaps.shape.rank != 4:
            raise ValueError(f"`heatmaps` must be [B, H, W, K]. Received: "
                             f"heatmaps.shape={heatmaps.shape}")
        shape = tf.shape(heatmaps)
        height, width = shape[1], shape[2]
        flat = tf.reshape(tf.transpose(heatmaps, [0, 3, 1, 2]), [shape[0], shape[3], -1])
        index = tf.argmax(flat, axis=-1, output_type=tf.int32)  # [B, K]
        score = tf.reduce_max(flat, axis=-1)
        py, px = index // width, index % width

        def at(row, col):
            safe = tf.clip_by_value(row, 0, height - 1) * width + tf.clip_by_value(col, 0,
                                                                                    width - 1)
            return tf.gather(flat, safe[..., None], batch_dims=2)[..., 0]

        inside = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
        dx = tf.sign(at(py, px + 1) - at(py, px - 1))
        dy = tf.sign(at(py + 1, px) - at(py - 1, px))
        x = tf.cast(px, tf.float32) + tf.where(inside, 0.25 * dx, 0.0)
        y = tf.cast(py, tf.float32) + tf.where(inside, 0.25 * dy, 0.0)
        return tf.stack([x * stride, y * stride, score], axis=-1)
