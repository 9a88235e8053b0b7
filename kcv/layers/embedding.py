"""Embeddings for Transformers: sinusoidal positions, tokens + positions, image patches.

The sinusoidal encoding and the token embedding scaled by `sqrt(d_model)` are those of
Vaswani et al. 2017 (Sec. 3.4-3.5); the patch embedding, class token and learned position
embeddings (with interpolation to another image size) those of Dosovitskiy et al. 2021.
"""

import math

import keras
from keras import ops

from kcv.layers._checks import check_positive_int as _check_positive_int

_POSITIONAL = ("sinusoidal", "learned")


def sinusoidal_positional_encoding(length, depth, start_index=0, max_wavelength=10000.0,
                                   dtype="float32"):
    """The sinusoidal positional encoding of Vaswani et al. 2017, Sec. 3.5.

    Formula:
        `PE[pos, 2i] = sin(pos / max_wavelength^(2i / depth))`,
        `PE[pos, 2i + 1] = cos(pos / max_wavelength^(2i / depth))`, for
        `pos = start_index, ..., start_index + length - 1` (sines and cosines interleaved).

    Args:
        length: number of positions (int or scalar tensor).
        depth: size of each encoding (`d_model`); an odd depth drops the last cosine.
        start_index: first position (int or scalar tensor), e.g. the step of an incremental
            decoder. Default 0.
        max_wavelength: the base of the geometric progression of wavelengths. Default 10000.
        dtype: dtype of the result. Default "float32".

    Returns:
        A `[length, depth]` tensor.

    Example:
        >>> pe = sinusoidal_positional_encoding(4, 6)
        >>> tuple(pe.shape), float(pe[0, 1])  # cos(0) = 1
        ((4, 6), 1.0)

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    half = (depth + 1) // 2
    positions = ops.cast(ops.arange(length) + start_index, "float32")[:, None]
    exponent = ops.cast(ops.arange(half), "float32") * (2.0 / depth)
    angles = positions / ops.power(float(max_wavelength), exponent)[None, :]  # [L, half]
    interleaved = ops.reshape(ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1),
                              (-1, 2 * half))
    return ops.cast(interleaved[:, :depth], dtype)


@keras.saving.register_keras_serializable(package="kcv")
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """The fixed sinusoidal positional encoding (Vaswani et al. 2017, Sec. 3.5) of a sequence.

    Returns the encoding broadcast to the input's shape (add it to the input yourself), so
    that it can be used on embeddings of any length.

    Args:
        max_wavelength: base of the wavelengths' geometric progression. Default 10000.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[B, T, D]` float tensor.
        start_index: position of the first step. Default 0.

    Example:
        >>> x = keras.ops.zeros((2, 5, 8))
        >>> SinusoidalPositionalEncoding()(x).shape
        TensorShape([2, 5, 8])

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(max_wavelength, bool) or not isinstance(max_wavelength, (int, float)) \
                or max_wavelength <= 1:
            raise ValueError(f"`max_wavelength` must be a number > 1. "
                             f"Received: max_wavelength={max_wavelength!r}")
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        encoding = sinusoidal_positional_encoding(shape[-2], inputs.shape[-1], start_index,
                                                  self.max_wavelength, dtype=inputs.dtype)
        return ops.broadcast_to(encoding, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength}


@keras.saving.register_keras_serializable(package="kcv")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding scaled by `sqrt(d_model)` plus a positional encoding.

    Formula:
        `out[b, t] = E[tokens[b, t]] * sqrt(d_model) + P[start_index + t]`, with `P` the
        sinusoidal encoding or a learned table of `max_length` rows (Vaswani et al. 2017,
        Sec. 3.4: "we multiply those weights by sqrt(d_model)").

    Args:
        vocab_size: number of token ids.
        max_length: longest sequence (rows of the learned table; for the sinusoidal encoding
            a bound checked on static shapes only).
        d_model: embedding size.
        positional: "sinusoidal" (default, the paper's) or "learned".
        scale_embeddings: multiply token embeddings by `sqrt(d_model)`. Default True.
        mask_zero: produce a Keras mask `tokens != 0` (as `keras.layers.Embedding`) that the
            kcv Transformer layers use as a padding mask. Default False.
        embeddings_initializer: initializer of the token table. Default normal with standard
            deviation `d_model ** -0.5`, so that scaled embeddings have unit variance.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: int `[B, T]` token ids, or with `reverse=True` float `[B, T, d_model]`.
        start_index: position of the first token (incremental decoding). Default 0.
        reverse: return `inputs @ E^T`, logits over the vocabulary with the same table
            (weight tying, Vaswani et al. 2017 Sec. 3.4). Default False.

    Example:
        >>> layer = TokenAndPositionEmbedding(100, 16, 8, mask_zero=True)
        >>> y = layer(keras.ops.convert_to_tensor([[5, 7, 0]]))
        >>> tuple(y.shape), layer.compute_mask([[5, 7, 0]]).numpy().tolist()
        ((1, 3, 8), [[True, True, False]])

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(self, vocab_size, max_length, d_model, positional="sinusoidal",
                 scale_embeddings=True, mask_zero=False, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("max_length", max_length)
        _check_positive_int("d_model", d_model)
        if positional not in _POSITIONAL:
            raise ValueError(f"`positional` must be one of {_POSITIONAL}. "
                             f"Received: positional={positional!r}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.d_model = d_model
        self.positional = positional
        self.scale_embeddings = scale_embeddings
        self.mask_zero = mask_zero
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=d_model ** -0.5))

    def build(self, input_shape):
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size, self.d_model, embeddings_initializer=self.embeddings_initializer,
            name="token_embedding", dtype=self.dtype_policy)
        self.token_embedding.build(input_shape)
        if self.positional == "learned":
            self.position_embedding = keras.layers.Embedding(
                self.max_length, self.d_model, name="position_embedding",
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=self.dtype_policy)
            self.position_embedding.build((None,))

    def call(self, inputs, start_index=0, reverse=False):
        if reverse:
            table = ops.cast(self.token_embedding.embeddings, inputs.dtype)
            return ops.matmul(inputs, ops.transpose(table))
        if inputs.shape[-1] is not None and isinstance(start_index, int) \
                and inputs.shape[-1] + start_index > self.max_length:
            raise ValueError(f"Sequences are longer than `max_length`={self.max_length}. "
                             f"Received: inputs.shape={tuple(inputs.shape)}")
        x = self.token_embedding(inputs)
        if self.scale_embeddings:
            x = x * ops.cast(math.sqrt(self.d_model), x.dtype)
        length = ops.shape(inputs)[-1]
        if self.positional == "learned":
            positions = self.position_embedding(ops.arange(length) + start_index)
        else:
            positions = sinusoidal_positional_encoding(length, self.d_model, start_index,
                                                       dtype=x.dtype)
        return x + ops.cast(positions, x.dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or "float" in str(getattr(inputs, "dtype", "int")):
            return None
        return ops.not_equal(inputs, 0)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "d_model": self.d_model,
            "positional": self.positional,
            "scale_embeddings": self.scale_embeddings,
            "mask_zero": self.mask_zero,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.saving.register_keras_serializable(package="kcv")
class PatchEmbedding(keras.layers.Layer):
    """Splits an image into non-overlapping patches and projects each to `hidden_dim`.

    A `patch_size x patch_size` convolution with stride `patch_size` (the "hybrid-free" patch
    projection of ViT, equal to flattening each patch and a shared linear map), flattened to
    a sequence in row-major patch order.

    Args:
        patch_size: side of a square patch in pixels; the image sides must be multiples.
        hidden_dim: size of each patch embedding.
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[B, H, W, C]`. Output shape: `[B, (H / p) * (W / p), hidden_dim]`.

    Example:
        >>> PatchEmbedding(4, 32)(keras.ops.zeros((2, 16, 12, 3))).shape
        TensorShape([2, 12, 32])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
        at Scale", ICLR 2021.
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("patch_size", patch_size)
        _check_positive_int("hidden_dim", hidden_dim)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"PatchEmbedding expects [B, H, W, C] images. "
                             f"Received: input_shape={tuple(input_shape)}")
        for side in input_shape[1:3]:
            if side is not None and side % self.patch_size:
                raise ValueError(f"Image sides must be multiples of `patch_size`="
                                 f"{self.patch_size}. Received: input_shape={tuple(input_shape)}")
        self.projection = keras.layers.Conv2D(self.hidden_dim, self.patch_size,
                                              strides=self.patch_size, name="projection",
                                              dtype=self.dtype_policy)
        self.projection.build(input_shape)

    def call(self, inputs):
        x = self.projection(inputs)
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1] * shape[2], self.hidden_dim))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1:3]
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="kcv")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token (BERT's [class], ViT's `x_class`) to a sequence.

    Initialised to zeros, as in torchvision's and the reference ViT.

    Args:
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[B, N, D]`. Output shape: `[B, N + 1, D]`.

    Example:
        >>> ClassToken()(keras.ops.ones((2, 4, 8))).shape
        TensorShape([2, 5, 8])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Eq. 1.
    """

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros",
                                     name="token")

    def call(self, inputs):
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, inputs.shape[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package="kcv")
class LearnedPositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding `[1, N, D]` (one row per token) to a sequence.

    Initialised from a normal distribution with standard deviation 0.02 (torchvision's ViT).
    To reuse the weights at another image size, resample the table with
    `interpolate_position_embedding`.

    Args:
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[B, N, D]` with a static `N`. Output shape: same.

    Example:
        >>> LearnedPositionEmbedding()(keras.ops.zeros((2, 5, 8))).shape
        TensorShape([2, 5, 8])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Eq. 1.
    """

    def build(self, input_shape):
        if input_shape[1] is None:
            raise ValueError(f"LearnedPositionEmbedding needs a static sequence length. "
                             f"Received: input_shape={tuple(input_shape)}")
        self.embedding = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]), name="embedding",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def interpolate_position_embedding(embedding, source_grid, target_grid, num_prefix_tokens=1,
                                   method="bicubic"):
    """Resamples a ViT position table to another patch grid (Dosovitskiy et al. 2021, Sec. 3.2).

    The prefix rows (the class token's) are kept; the patch rows, laid out row-major on
    `source_grid`, are resized as an image to `target_grid` with `keras.ops.image.resize`.

    Args:
        embedding: `[1, num_prefix_tokens + gh * gw, D]` array.
        source_grid: `(gh, gw)` patch grid the table was trained on.
        target_grid: `(gh', gw')` patch grid wanted.
        num_prefix_tokens: leading rows that are not patches. Default 1.
        method: interpolation ("bicubic" as timm, "bilinear", "nearest"). Default "bicubic".

    Returns:
        A `[1, num_prefix_tokens + gh' * gw', D]` tensor.

    Example:
        >>> table = keras.ops.ones((1, 1 + 2 * 2, 3))
        >>> interpolate_position_embedding(table, (2, 2), (3, 3)).shape
        TensorShape([1, 10, 3])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    """
    embedding = ops.convert_to_tensor(embedding)
    gh, gw = source_grid
    expected = num_prefix_tokens + gh * gw
    if embedding.shape[1] != expected:
        raise ValueError(f"`embedding` has {embedding.shape[1]} rows, `source_grid`={source_grid} "
                         f"with {num_prefix_tokens} prefix tokens needs {expected}. "
                         f"Received: embedding.shape={tuple(embedding.shape)}")
    prefix, patches = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    grid = ops.reshape(patches, (1, gh, gw, embedding.shape[-1]))
    resized = ops.image.resize(grid, tuple(target_grid), interpolation=method)
    resized = ops.reshape(resized, (1, target_grid[0] * target_grid[1], embedding.shape[-1]))
    return ops.concatenate([prefix, ops.cast(resized, prefix.dtype)], axis=1)
