"""A factory for the normalization layers kcv blocks accept through their `norm` argument."""

import keras

from kcv.layers._checks import NORMS, check_positive_int


def normalization(kind, *, groups=32, channels=None, axis=-1, epsilon=1e-3, name=None,
                  dtype=None):
    """Returns a new normalization layer of the given kind, or `None` for no normalization.

    With `N` images of `H x W` pixels and `C` channels, the kinds differ in the set of values
    whose mean and variance normalise each value (Wu & He 2018, Fig. 2):

    - `"batch"`: `BatchNormalization`, per channel over (N, H, W);
    - `"layer"`: per image over (H, W, C), the layer normalization of Ba et al. for
      convolutional features (`GroupNormalization(groups=1)`: one group holding every channel);
    - `"instance"`: per image and channel over (H, W) (`GroupNormalization` with one group per
      channel);
    - `"group"`: per image and group of `C / groups` channels over (H, W, C / groups)
      (`GroupNormalization(groups)`).

    Every kind but `"batch"` uses the same statistics in training and inference; each has a
    learned per-channel scale and offset.

    Args:
        kind: `"batch"`, `"layer"`, `"instance"`, `"group"`, or `None`.
        groups: number of groups for `"group"`; default 32 as in Wu & He (2018).
        channels: the channel count, when known, to check that `groups` divides it.
        axis: the channel axis (NHWC: -1).
        epsilon: added to the variance.
        name: layer name.
        dtype: dtype policy for the layer (pass the calling layer's `dtype_policy`).

    Returns:
        A `keras.layers.Layer`, or `None` when `kind is None`.

    Example:
        >>> norm = normalization("layer", name="enc1_norm")
        >>> y = norm(keras.random.normal((2, 4, 4, 8), seed=1) * 3.0 + 1.0)
        >>> mean = keras.ops.mean(y, axis=(1, 2, 3))  # one mean per image, over (H, W, C)
        >>> var = keras.ops.var(y, axis=(1, 2, 3))
        >>> bool(keras.ops.all(keras.ops.abs(mean) < 1e-5)), bool(keras.ops.all(var > 0.99))
        (True, True)
        >>> normalization("group", groups=8, channels=64).groups
        8
        >>> print(normalization(None))
        None

    Reference:
        Ba et al., "Layer Normalization", 2016; Wu & He, "Group Normalization", ECCV 2018;
        Ulyanov et al., "Instance Normalization", 2016; Ioffe & Szegedy, "Batch
        Normalization", ICML 2015.
    """
    if kind not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={kind!r}")
    if kind is None:
        return None
    kwargs = {"axis": axis, "epsilon": epsilon, "name": name, "dtype": dtype}
    if kind == "batch":
        return keras.layers.BatchNormalization(**kwargs)
    if kind == "layer":
        return keras.layers.GroupNormalization(groups=1, **kwargs)
    if kind == "instance":
        return keras.layers.GroupNormalization(groups=-1, **kwargs)
    check_positive_int("groups", groups)
    if channels is not None and channels % groups:
        raise ValueError(
            f"`groups` must divide the number of channels for group normalization. "
            f"Received: groups={groups}, channels={channels}"
        )
    return keras.layers.GroupNormalization(groups=groups, **kwargs)


def block_normalization(block, kind, channels, name):
    """The normalization layer `kind` for a sublayer `name` of the kcv block `block`, with
    `block.norm_groups` groups and the block's dtype policy; the error names `norm_groups`."""
    if kind == "group" and channels % block.norm_groups:
        raise ValueError(
            f"`norm_groups` must divide the channels of every normalized layer of "
            f"{block.__class__.__name__} ({name}). Received: norm_groups={block.norm_groups}, "
            f"channels={channels}")
    return normalization(kind, groups=block.norm_groups, channels=channels, name=name,
                         dtype=block.dtype_policy)
