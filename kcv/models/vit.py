"""The Vision Transformer (Dosovitskiy et al. 2021) from kcv patch, token and encoder layers."""

import keras
import numpy as np

from kcv.layers._checks import check_positive_int as _check_positive_int
from kcv.layers.embedding import (
    ClassToken,
    LearnedPositionEmbedding,
    PatchEmbedding,
    interpolate_position_embedding,
)
from kcv.layers.transformer import TransformerEncoderLayer

_POOLING = ("token", "gap")


def VisionTransformer(input_shape, num_classes, patch_size=16, hidden_dim=768, num_layers=12,
                      num_heads=12, mlp_dim=3072, dropout=0.0, pooling="token",
                      name="vision_transformer"):
    """Builds a ViT: patch embedding, class token, learned positions, pre-LN encoder, head.

    Formula (Dosovitskiy et al. 2021, Eq. 1-4): `z0 = [x_class; x_p E] + E_pos`;
    `z' = MSA(LN(z)) + z`, `z = MLP(LN(z')) + z'` (GELU MLP) for `num_layers` layers;
    `y = LN(z_L^0)` (class token, `pooling="token"`) or the mean over the patch tokens after
    the final LayerNorm (`pooling="gap"`); a linear head gives the logits. LayerNorm epsilon
    1e-6 as torchvision's and the reference implementation. The defaults are ViT-B/16:
    86,567,656 parameters at 224x224 with 1000 classes, as torchvision's `vit_b_16`.

    Args:
        input_shape: `(H, W, C)`, sides multiples of `patch_size`.
        num_classes: logits of the head.
        patch_size: patch side in pixels. Default 16.
        hidden_dim: token width D. Default 768.
        num_layers: encoder layers. Default 12.
        num_heads: attention heads. Default 12.
        mlp_dim: MLP hidden size. Default 3072.
        dropout: dropout after the embeddings and in every encoder layer. Default 0.0.
        pooling: "token" (default, the class token) or "gap" (global average of patches).
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` images to float32 logits `[B, num_classes]`.

    Example:
        >>> model = VisionTransformer((32, 32, 3), 10, patch_size=8, hidden_dim=32,
        ...                           num_layers=2, num_heads=4, mlp_dim=64)
        >>> model(np.zeros((2, 32, 32, 3), "float32")).shape
        TensorShape([2, 10])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
        at Scale", ICLR 2021.
    """
    if len(input_shape) != 3 or any(s is None for s in input_shape[:2]):
        raise ValueError(f"`input_shape` must be a static (H, W, C). "
                         f"Received: input_shape={input_shape!r}")
    for arg, value in dict(num_classes=num_classes, num_layers=num_layers).items():
        _check_positive_int(arg, value)
    if pooling not in _POOLING:
        raise ValueError(f"`pooling` must be one of {_POOLING}. Received: pooling={pooling!r}")
    images = keras.Input(input_shape, name="images")
    x = PatchEmbedding(patch_size, hidden_dim, name="patch_embedding")(images)
    if pooling == "token":
        x = ClassToken(name="class_token")(x)
    x = LearnedPositionEmbedding(name="position_embedding")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderLayer(hidden_dim, num_heads, mlp_dim, dropout=dropout,
                                    activation="gelu", norm_first=True, layer_norm_epsilon=1e-6,
                                    name=f"encoder_layer_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    if pooling == "token":
        x = ClassTokenOutput(name="pool")(x)
    else:
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(x)
    return keras.Model(images, logits, name=name)


@keras.saving.register_keras_serializable(package="kcv")
class ClassTokenOutput(keras.layers.Layer):
    """The class token's row `[B, D]` of a `[B, N, D]` sequence (ViT's `z_L^0`)."""

    def call(self, inputs):
        return inputs[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def attention_maps(model, images):
    """Attention weights of every encoder layer of a `VisionTransformer`, `[B, H, N, N]` each.

    Args:
        model: a model built by `VisionTransformer`.
        images: `[B, H, W, C]` float array.

    Returns:
        A list with one numpy array per layer (token 0 is the class token with "token" pooling).
    """
    names = {layer.name for layer in model.layers}
    x = model.get_layer("patch_embedding")(np.asarray(images, np.float32))
    if "class_token" in names:
        x = model.get_layer("class_token")(x)
    x = model.get_layer("position_embedding")(x)
    maps, i = [], 0
    while f"encoder_layer_{i}" in names:
        x, scores = model.get_layer(f"encoder_layer_{i}")(x, return_attention_scores=True)
        maps.append(np.asarray(scores))
        i += 1
    return maps


def resize_vision_transformer(model, input_shape):
    """A copy of a `VisionTransformer` for another image size, position table interpolated.

    Builds the same architecture at `input_shape`, copies every weight and resamples the
    learned position embeddings to the new patch grid (bicubic, Dosovitskiy et al. 2021
    Sec. 3.2, "2D interpolation of the pre-trained position embeddings").

    Args:
        model: a model built by `VisionTransformer`.
        input_shape: new `(H, W, C)`.

    Returns:
        The new `keras.Model`.
    """
    patch = model.get_layer("patch_embedding")
    encoder = model.get_layer("encoder_layer_0")
    layers = sum(1 for layer in model.layers if layer.name.startswith("encoder_layer_"))
    token = any(layer.name == "class_token" for layer in model.layers)
    new = VisionTransformer(input_shape, model.get_layer("head").units, patch.patch_size,
                            patch.hidden_dim, layers, encoder.num_heads, encoder.dim_feedforward,
                            encoder.dropout, "token" if token else "gap", name=model.name)
    p = patch.patch_size
    old_grid = tuple(s // p for s in model.input_shape[1:3])
    new_grid = tuple(s // p for s in input_shape[:2])
    for old_layer, new_layer in zip(model.layers, new.layers):
        weights = old_layer.get_weights()
        if old_layer.name == "position_embedding":
            weights = [np.asarray(interpolate_position_embedding(
                weights[0], old_grid, new_grid, num_prefix_tokens=int(token)))]
        new_layer.set_weights(weights)
    return new
