"""Argument checks shared by the kcv model builders (backbones and segmentation models).

Each check raises a `ValueError` that names the argument and echoes the value received. The
checks on single layer arguments (`check_positive_int`, `NORMS`) live in `kcv.layers._checks`.
"""

import os

from kcv.layers._checks import check_positive_int

_POOLINGS = (None, "avg", "max")


def check_one_of(name, value, choices):
    """Raises a ValueError naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def check_rate(name, value):
    """Raises a ValueError naming `name` unless `0 <= value < 1` (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")


def check_input_shape(input_shape, factor, why, known=False):
    """Checks that `input_shape` is `(H, W, C)` with H and W positive multiples of `factor`.

    Args:
        input_shape: the builder's `input_shape`.
        factor: what H and W must be divisible by (the model's total downsampling).
        why: the text after "divisible by" in the error, e.g. `"32 (the backbone downsamples
            5 times)"`.
        known: whether H and W must be given (`None` is otherwise accepted).

    Returns:
        `input_shape` as a tuple.
    """
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape!r}")
    input_shape = tuple(input_shape)
    for dim, size in zip(("height", "width"), input_shape[:2]):
        if size is None and not known:
            continue
        if (size is None or isinstance(size, bool) or not isinstance(size, int) or size < factor
                or size % factor):
            raise ValueError(
                f"The input {dim} must be {'known and ' if known else ''}divisible by {why}. "
                f"Received: input_shape={input_shape}"
            )
    return input_shape


def check_weights_file(name, value):
    """Raises a ValueError naming `name` unless `value` is None or an existing file's path."""
    if value is not None and not (isinstance(value, (str, os.PathLike)) and os.path.isfile(value)):
        raise ValueError(
            f"`{name}` must be None (random initialization) or the path to an existing weights "
            "file (for example a keras.applications ImageNet `.h5` file; kcv downloads nothing). "
            f"Received: {name}={value!r}"
        )


def validate_backbone_args(input_shape, include_top, weights, pooling, classes, return_features,
                           fixed_size=False):
    """Validates the arguments every backbone builder shares; returns `input_shape` as a tuple.

    Args:
        input_shape: `(H, W, C)`; H and W divisible by 32, or `None` (any size at run time)
            unless `fixed_size` (a classifier top that flattens needs them).
        include_top, weights, pooling, classes, return_features: as in the builders.
        fixed_size: whether H and W must be given.
    """
    input_shape = check_input_shape(
        input_shape, 32, "32 (the backbone downsamples 5 times, to stride 32"
        + ("; the classifier top flattens the features, so the size must be given)"
           if fixed_size else ")"), known=fixed_size)
    check_one_of("pooling", pooling, _POOLINGS)
    check_positive_int("classes", classes)
    if return_features and include_top:
        raise ValueError(
            "`return_features=True` returns the C2..C5 feature maps and needs "
            "`include_top=False`. Received: include_top=True, return_features=True"
        )
    check_weights_file("weights", weights)
    return input_shape
