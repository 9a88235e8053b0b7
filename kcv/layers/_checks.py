"""Argument checks and config helpers shared by the kcv layers (private to kcv).

Every check raises a `ValueError` that names the argument and echoes the value received. The
block helpers (`set_block_args`, `unit_kwargs`, `base_block_config`, `build_chain`,
`call_chain`) implement the arguments every kcv block shares: `norm`, `norm_groups`,
`activation` and `kernel_initializer`.

This module imports nothing from kcv, so every kcv module (including
`kcv.layers.normalization`) can import it.
"""

import keras

NORMS = ("batch", "layer", "instance", "group", None)
"""The normalization kinds a kcv block accepts as `norm` (see `kcv.layers.normalization`)."""


# --- argument checks ---------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name, value):
    """Returns `value` if it is an int >= 1 (not a bool), else raises a ValueError naming `name`.

    >>> check_positive_int("filters", 8)
    8
    >>> check_positive_int("filters", 0)
    Traceback (most recent call last):
    ...
    ValueError: `filters` must be a positive integer. Received: filters=0
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


def check_int_or_pair(name, value):
    """Returns `value` as a 2-tuple of positive ints: an int `n` gives `(n, n)`.

    >>> check_int_or_pair("kernel_size", 3)
    (3, 3)
    >>> check_int_or_pair("strides", [2, 1])
    (2, 1)
    >>> check_int_or_pair("strides", (2, 0))
    Traceback (most recent call last):
    ...
    ValueError: `strides` must be a positive integer or a pair of positive integers. Received: strides=(2, 0)
    """
    pair = (value, value) if _is_int(value) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(_is_int(v) and v >= 1 for v in pair)):
        raise ValueError(f"`{name}` must be a positive integer or a pair of positive integers. "
                         f"Received: {name}={value!r}")
    return tuple(pair)


def check_rates(rates):
    """Checks that `rates` is a non-empty list or tuple of positive ints (dilation rates)."""
    if not isinstance(rates, (list, tuple)) or not rates or not all(
            _is_int(r) and r >= 1 for r in rates):
        raise ValueError(f"`rates` must be a non-empty sequence of positive integers. "
                         f"Received: rates={rates!r}")


def check_norm(norm, norm_groups):
    """Checks a block's `norm` (one of `NORMS`) and `norm_groups` (a positive int)."""
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={norm!r}")
    check_positive_int("norm_groups", norm_groups)


def check_activation(activation):
    """Checks that `keras.activations.get` accepts `activation` (a name, function or None)."""
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`activation` must be an activation name, a Keras activation or None. "
            f"Received: activation={activation!r}"
        ) from e


def input_channels(input_shape, layer_name):
    """The static channel count of an NHWC `input_shape`; `layer_name` goes into the error."""
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer_name} expects NHWC inputs of rank 4. Received: input_shape={input_shape}"
        )
    if input_shape[-1] is None:
        raise ValueError(
            f"{layer_name} needs a known channel count. Received: input_shape={input_shape}"
        )
    return int(input_shape[-1])


# --- serialization -----------------------------------------------------------------------------


def serialize_activation(activation):
    """`activation` as it goes into a config: names, dicts and None as given, functions
    serialized."""
    if activation is None or isinstance(activation, (str, dict)):
        return activation
    return keras.activations.serialize(activation)


def serialize_initializer(initializer):
    """`initializer` (a name, dict or instance) as a serialized Keras initializer."""
    return keras.initializers.serialize(keras.initializers.get(initializer))


# --- the arguments every kcv block shares ------------------------------------------------------


def set_block_args(layer, norm, norm_groups, activation, kernel_initializer):
    """Validates and stores on `layer` the arguments every kcv block shares."""
    check_norm(norm, norm_groups)
    check_activation(activation)
    layer.norm = norm
    layer.norm_groups = norm_groups
    layer.activation = activation
    layer.kernel_initializer = kernel_initializer


def base_block_config(layer):
    """The config entries of the arguments stored by `set_block_args`."""
    return {
        "norm": layer.norm,
        "norm_groups": layer.norm_groups,
        "activation": serialize_activation(layer.activation),
        "kernel_initializer": serialize_initializer(layer.kernel_initializer),
    }


def unit_kwargs(layer, **overrides):
    """Keyword arguments for a `ConvBNAct` sublayer that inherits `layer`'s shared settings."""
    return {"norm": layer.norm, "norm_groups": layer.norm_groups, "activation": layer.activation,
            "kernel_initializer": layer.kernel_initializer, "dtype": layer.dtype_policy,
            **overrides}


def build_chain(sublayers, input_shape):
    """Builds `sublayers` in order (None entries skipped); returns the output shape."""
    shape = tuple(input_shape)
    for sub in sublayers:
        if sub is None:
            continue
        sub.build(shape)
        shape = tuple(sub.compute_output_shape(shape))
    return shape


def chain_output_shape(sublayers, input_shape):
    """The output shape of `sublayers` applied in order (None entries skipped)."""
    shape = tuple(input_shape)
    for sub in sublayers:
        if sub is not None:
            shape = tuple(sub.compute_output_shape(shape))
    return shape


def call_chain(sublayers, x, training=None):
    """Applies `sublayers` in order (None entries skipped), passing `training` on."""
    for sub in sublayers:
        if sub is not None:
            x = sub(x, training=training)  # Keras drops `training` for layers without it
    return x
