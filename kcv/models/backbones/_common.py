"""Checks and endings shared by the backbone builders (MobileNet, ResNet, VGG)."""

import os

import keras

_POOLINGS = (None, "avg", "max")
_FEATURE_STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}


def validate_backbone_args(input_shape, include_top, weights, pooling, classes, return_features,
                           fixed_size=False):
    """Validates the arguments every backbone builder shares; returns `input_shape` as a tuple.

    Args:
        input_shape: `(H, W, C)`; H and W divisible by 32, or `None` (any size at run time)
            unless `fixed_size` (a classifier top that flattens needs them).
        include_top, weights, pooling, classes, return_features: as in the builders.
        fixed_size: whether H and W must be given.
    """
    if input_shape is None or len(tuple(input_shape)) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape!r}")
    input_shape = tuple(input_shape)
    for dim, size in zip(("height", "width"), input_shape[:2]):
        if size is None:
            if fixed_size:
                raise ValueError(
                    f"The input {dim} must be given when the classifier top flattens the "
                    f"features. Received: input_shape={input_shape}"
                )
            continue
        if not isinstance(size, int) or size < 32 or size % 32:
            raise ValueError(
                f"The input {dim} must be a multiple of 32 (the backbone downsamples 5 times, "
                f"to stride 32). Received: input_shape={input_shape}"
            )
    if pooling not in _POOLINGS:
        raise ValueError(f"`pooling` must be one of {_POOLINGS}. Received: pooling={pooling!r}")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive int. Received: classes={classes!r}")
    if return_features and include_top:
        raise ValueError(
            "`return_features=True` returns the C2..C5 feature maps and needs "
            "`include_top=False`. Received: include_top=True, return_features=True"
        )
    if weights is not None and not (isinstance(weights, (str, os.PathLike))
                                     and os.path.isfile(weights)):
        raise ValueError(
            "`weights` must be None (random initialization) or the path to an existing weights "
            "file (for example a keras.applications ImageNet `.h5` file; kcv downloads nothing). "
            f"Received: weights={weights!r}"
        )
    return input_shape


def finish_backbone(inputs, x, *, include_top, pooling, weights, return_features, feature_layers,
                    name, top=None):
    """Adds the top or the pooling, builds the model, loads `weights`, selects the features.

    Args:
        inputs: the model's input tensor.
        x: the last feature map.
        include_top: whether to call `top(x)` to add the classifier.
        pooling: `None`, `"avg"` or `"max"`, applied when there is no top.
        weights: `None` or a weights file path (loaded into the full model).
        return_features: return a model with a dict of C2..C5 outputs instead.
        feature_layers: `{"C2": layer_name, ...}` of the feature maps at strides 4..32.
        name: model name.
        top: callable adding the classifier head to `x`.

    Returns:
        A `keras.Model`.
    """
    if include_top:
        x = top(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    if return_features:
        outputs = {key: model.get_layer(feature_layers[key]).output for key in _FEATURE_STRIDES}
        model = keras.Model(inputs, outputs, name=name)
    return model
