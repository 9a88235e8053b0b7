"""Argument checks and the output head shared by the segmentation model builders."""

import keras


def check_positive_ints(**values):
    """Raises a ValueError naming the first argument that is not a positive int."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{key}` must be a positive int. Received: {key}={value!r}")


def check_input_shape(input_shape, factor, why, known=False):
    """`(H, W, C)` with H and W divisible by `factor` (and known, when `known`)."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape!r}")
    for dim, size in zip(("height", "width"), input_shape[:2]):
        if (size is None and known) or (size is not None and size % factor):
            raise ValueError(
                f"The input {dim} must be {'known and ' if known else ''}divisible by {why}. "
                f"Received: input_shape={tuple(input_shape)}"
            )


def output_activation_layer(x, num_classes, output_activation, name=None):
    """The float32 output activation: `"auto"` is sigmoid for one class and softmax otherwise;
    `None` gives logits (a linear layer). `name` defaults to `"probabilities"` / `"logits"`;
    models with several heads pass one name per head."""
    if output_activation == "auto":
        output_activation = "sigmoid" if num_classes == 1 else "softmax"
    if name is None:
        name = "probabilities" if output_activation else "logits"
    return keras.layers.Activation(output_activation or "linear", dtype="float32", name=name)(x)
