"""A factory for the normalization layers kcv blocks accept through their `norm` argument."""

import keras

_KINDS = ("batch", "layer", "instance", "group", None)


def normalization(kind, *, groups=32, channels=None, axis=-1, epsilon=1e-3, name=None,
                  dtype=None):
    """Returns a new normalization layer of the given kind, or `None` for no normalization.

    Args:
        kind: `"batch"` (`BatchNormalization`), `"layer"` (`LayerNormalization` over the channel
            axis), `"instance"` (`GroupNormalization` with one group per channel, i.e. per-image
            per-channel statistics), `"group"` (`GroupNormalization(groups)`), or `None`.
        groups: number of groups for `"group"`; default 32 as in Wu & He (2018).
        channels: the channel count, when known, to check that `groups` divides it.
        axis: the channel axis (NHWC: -1).
        epsilon: added to the variance.
        name: layer name.
        dtype: dtype policy for the layer (pass the calling layer's `dtype_policy`).

    Returns:
        A `keras.layers.Layer`, or `None` when `kind is None`.

    Example:
        >>> norm = normalization("group", groups=8, channels=64, name="enc1_norm")

    Reference:
        Wu & He, "Group Normalization", ECCV 2018; Ulyanov et al., "Instance Normalization", 2016.
    """
    if kind not in _KINDS:
        raise ValueError(f"`norm` must be one of {_KINDS}. Received: norm={kind!r}")
    if kind is None:
        return None
    kwargs = {"name": name, "dtype": dtype}
    if kind == "batch":
        return keras.layers.BatchNormalization(axis=axis, epsilon=epsilon, **kwargs)
    if kind == "layer":
        return keras.layers.LayerNormalization(axis=axis, epsilon=epsilon, **kwargs)
    if kind == "instance":
        return keras.layers.GroupNormalization(groups=-1, axis=axis, epsilon=epsilon, **kwargs)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"`groups` must be a positive integer. Received: groups={groups!r}")
    if channels is not None and channels % groups:
        raise ValueError(
            f"`groups` must divide the number of channels for group normalization. "
            f"Received: groups={groups}, channels={channels}"
        )
    return keras.layers.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon, **kwargs)
