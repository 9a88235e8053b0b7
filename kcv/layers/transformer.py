"""Transformer encoder and decoder layers (Vaswani et al. 2017) on keras.layers.MultiHeadAttention.

Both follow `torch.nn.TransformerEncoderLayer` / `TransformerDecoderLayer`: post-LN by default
(`x = LayerNorm(x + Dropout(Sublayer(x)))`, the paper's Sec. 5.4), pre-LN with
`norm_first=True` (`x = x + Dropout(Sublayer(LayerNorm(x)))`, Xiong et al. 2020). Masks follow
Keras: 1 (True) = attend.
"""

import keras
from keras import ops

from kcv.layers._checks import check_activation as _check_activation
from kcv.layers._checks import check_positive_int as _check_positive_int
from kcv.layers._checks import serialize_activation as _serialize_activation


def causal_mask(query_length, key_length=None, start_index=0):
    """`[T, S]` bool mask letting query `i` (at position `start_index + i`) see keys `<= it`."""
    key_length = query_length if key_length is None else key_length
    rows = ops.arange(query_length)[:, None] + start_index
    return ops.greater_equal(rows, ops.arange(key_length)[None, :])


def combine_masks(key_padding_mask=None, attention_mask=None, causal=None):
    """One `[B, T, S]` (or `[T, S]`) bool attention mask from the parts given, or None.

    Args:
        key_padding_mask: `[B, S]`, 1 = a real key.
        attention_mask: `[B, T, S]` or `[T, S]`, 1 = may attend.
        causal: `[T, S]` bool from `causal_mask`.
    """
    masks = []
    if key_padding_mask is not None:
        masks.append(ops.cast(key_padding_mask, "bool")[:, None, :])
    for m in (attention_mask, causal):
        if m is not None:
            masks.append(ops.cast(m, "bool"))
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = ops.logical_and(out, m)
    return out


@keras.saving.register_keras_serializable(package="kcv")
class PaddingMask(keras.layers.Layer):
    """`tokens != pad_id` as a bool `[B, T]` padding mask (1 = real token, Keras convention).

    Args:
        pad_id: the padding token id. Default 0.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
        >>> PaddingMask(pad_id=0)(keras.ops.convert_to_tensor([[4, 2, 0]])).numpy().tolist()
        [[True, True, False]]
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            raise ValueError(f"`pad_id` must be a non-negative integer. Received: pad_id={pad_id!r}")
        self.pad_id = pad_id

    def call(self, inputs):
        return ops.not_equal(inputs, self.pad_id)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


def _implicit_mask(tensor, mask):
    return mask if mask is not None else getattr(tensor, "_keras_mask", None)


class _TransformerLayer(keras.layers.Layer):
    """Shared arguments, the feed-forward network and LayerNorm/residual plumbing."""

    def __init__(self, d_model, num_heads, dim_feedforward, dropout=0.1, activation="relu",
                 norm_first=False, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("d_model", d_model)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("dim_feedforward", dim_feedforward)
        if d_model % num_heads:
            raise ValueError(f"`d_model` must be divisible by `num_heads` (key_dim = d_model / "
                             f"num_heads). Received: d_model={d_model}, num_heads={num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        _check_activation(activation)
        self.d_model = d_model
        self.num_heads = num_heads
        self.dim_feedforward = dim_feedforward
        self.dropout = dropout
        self.activation = activation
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.supports_masking = True

    def _check_input(self, shape, what="inputs"):
        if len(shape) != 3 or shape[-1] != self.d_model:
            raise ValueError(f"`{what}` must be [B, T, d_model={self.d_model}]. "
                             f"Received: {what}.shape={tuple(shape)}")

    def _attention(self, name):
        return keras.layers.MultiHeadAttention(
            self.num_heads, self.d_model // self.num_heads, dropout=self.dropout, name=name,
            dtype=self.dtype_policy)

    def _norm(self, name):
        return keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=name,
                                               dtype=self.dtype_policy)

    def _dropout_layer(self, name):
        return keras.layers.Dropout(self.dropout, name=name, dtype=self.dtype_policy)

    def _build_feedforward(self, shape):
        self.linear1 = keras.layers.Dense(self.dim_feedforward, activation=self.activation,
                                          name="linear1", dtype=self.dtype_policy)
        self.linear2 = keras.layers.Dense(self.d_model, name="linear2", dtype=self.dtype_policy)
        self.ff_dropout = self._dropout_layer("ff_dropout")
        self.linear1.build(shape)
        self.linear2.build((*shape[:-1], self.dim_feedforward))

    def _feedforward(self, x, training):
        return self.linear2(self.ff_dropout(self.linear1(x), training=training))

    @staticmethod
    def _attend(attention, memory, mask, training, scores):
        """`f(x) = attention(x, memory or x)` for `_residual`; weights appended to `scores` (a list)."""

        def f(x):
            value = x if memory is None else memory
            if scores is None:  # no weights wanted: Keras may use its fused attention kernel
                return attention(x, value, attention_mask=mask, training=training)
            out, weights = attention(x, value, attention_mask=mask, training=training,
                                     return_attention_scores=True)
            scores.append(weights)
            return out

        return f

    def _residual(self, x, sublayer, norm, dropout, training):
        """Post-LN `norm(x + dropout(f(x)))` or pre-LN `x + dropout(f(norm(x)))`."""
        if self.norm_first:
            return x + dropout(sublayer(norm(x)), training=training)
        return norm(x + dropout(sublayer(x), training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout,
            "activation": _serialize_activation(self.activation),
            "norm_first": self.norm_first,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="kcv")
class TransformerEncoderLayer(_TransformerLayer):
    """One Transformer encoder layer: self-attention, then a position-wise feed-forward network.

    Formula (post-LN, `norm_first=False`, Vaswani et al. 2017 Sec. 3.1):
        `x = LN1(x + Dropout(MultiHead(x, x, x)))`,
        `y = LN2(x + Dropout(W2 Dropout(act(W1 x + b1)) + b2))`;
        pre-LN (`norm_first=True`): `x = x + Dropout(MultiHead(LN1(x)))`,
        `y = x + Dropout(FFN(LN2(x)))`. `MultiHead` has `num_heads` heads of
        `key_dim = d_model / num_heads` (512 = 8 x 64 in the paper); attention weights get
        dropout too, as in `torch.nn.MultiheadAttention`.

    Args:
        d_model: model width (input and output size).
        num_heads: attention heads; must divide `d_model`.
        dim_feedforward: hidden size of the feed-forward network (2048 in the paper).
        dropout: dropout rate of the residual branches, the FFN hidden layer and the attention
            weights. Default 0.1.
        activation: FFN activation. Default "relu" (the paper's); "gelu" for ViT/BERT.
        norm_first: pre-LN instead of post-LN. Default False.
        layer_norm_epsilon: LayerNorm epsilon. Default 1e-5 (torch's).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[B, S, d_model]`.
        mask: `[B, S]` padding mask (1 = real token); taken from the input's Keras mask (e.g.
            `mask_zero=True` embeddings) when not given.
        attention_mask: optional `[B, S, S]` or `[S, S]` mask (1 = may attend), combined with
            the padding mask.
        return_attention_scores: also return the `[B, num_heads, S, S]` attention weights.

    Example:
        >>> layer = TransformerEncoderLayer(16, 4, 32)
        >>> layer(keras.ops.zeros((2, 5, 16))).shape
        TensorShape([2, 5, 16])

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017;
        Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.
    """

    def build(self, input_shape):
        self._check_input(input_shape)
        self.self_attention = self._attention("self_attention")
        self.self_attention.build(input_shape, input_shape)
        self.norm1, self.norm2 = self._norm("norm1"), self._norm("norm2")
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)
        self.dropout1, self.dropout2 = self._dropout_layer("dropout1"), self._dropout_layer(
            "dropout2")
        self._build_feedforward(input_shape)

    def call(self, inputs, mask=None, attention_mask=None, training=None,
             return_attention_scores=False):
        mask = combine_masks(_implicit_mask(inputs, mask), attention_mask)
        scores = [] if return_attention_scores else None
        attend = self._attend(self.self_attention, None, mask, training, scores)
        x = self._residual(inputs, attend, self.norm1, self.dropout1, training)
        x = self._residual(x, lambda h: self._feedforward(h, training), self.norm2,
                           self.dropout2, training)
        return (x, scores[0]) if return_attention_scores else x


@keras.saving.register_keras_serializable(package="kcv")
class TransformerDecoderLayer(_TransformerLayer):
    """One Transformer decoder layer: masked self-attention, encoder-decoder attention, FFN.

    The three sublayers come in the paper's order (Vaswani et al. 2017, Sec. 3.1): masked
    multi-head self-attention over the target, multi-head attention whose keys and values are
    the encoder output (`memory`), then the position-wise feed-forward network, each with
    residual + LayerNorm (post-LN, or pre-LN with `norm_first=True`), as
    `torch.nn.TransformerDecoderLayer`.

    Args:
        d_model, num_heads, dim_feedforward, dropout, activation, norm_first,
        layer_norm_epsilon: as `TransformerEncoderLayer`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        target: `[B, T, d_model]` decoder input (or the list `[target, memory]`).
        memory: `[B, S, d_model]` encoder output.
        target_mask: `[B, T]` target padding mask (1 = real); defaults to `target`'s Keras mask.
        memory_mask: `[B, S]` source padding mask; defaults to `memory`'s Keras mask.
        use_causal_mask: mask future target positions in self-attention. Default True.
        return_attention_scores: also return `(self_scores [B, H, T, T],
            cross_scores [B, H, T, S])`.

    Example:
        >>> layer = TransformerDecoderLayer(16, 4, 32)
        >>> layer(keras.ops.zeros((2, 3, 16)), keras.ops.zeros((2, 5, 16))).shape
        TensorShape([2, 3, 16])

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def build(self, target_shape, memory_shape=None):
        if memory_shape is None and isinstance(target_shape, (list, tuple)) \
                and isinstance(target_shape[0], (list, tuple)):
            target_shape, memory_shape = target_shape
        self._check_input(target_shape, "target")
        memory_shape = target_shape if memory_shape is None else memory_shape
        self._check_input(memory_shape, "memory")
        self.self_attention = self._attention("self_attention")
        self.self_attention.build(target_shape, target_shape)
        self.cross_attention = self._attention("cross_attention")
        self.cross_attention.build(target_shape, memory_shape)
        self.norm1, self.norm2, self.norm3 = (self._norm(f"norm{i}") for i in (1, 2, 3))
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build(target_shape)
        self.dropout1, self.dropout2, self.dropout3 = (
            self._dropout_layer(f"dropout{i}") for i in (1, 2, 3))
        self._build_feedforward(target_shape)

    def call(self, target, memory=None, target_mask=None, memory_mask=None, use_causal_mask=True,
             training=None, return_attention_scores=False):
        if memory is None and isinstance(target, (list, tuple)):
            target, memory = target
        length = ops.shape(target)[1]
        self_mask = combine_masks(_implicit_mask(target, target_mask),
                                  causal=causal_mask(length) if use_causal_mask else None)
        cross_mask = combine_masks(_implicit_mask(memory, memory_mask))
        scores = [] if return_attention_scores else None
        self_attend = self._attend(self.self_attention, None, self_mask, training, scores)
        cross_attend = self._attend(self.cross_attention, memory, cross_mask, training, scores)
        x = self._residual(target, self_attend, self.norm1, self.dropout1, training)
        x = self._residual(x, cross_attend, self.norm2, self.dropout2, training)
        x = self._residual(x, lambda h: self._feedforward(h, training), self.norm3,
                           self.dropout3, training)
        return (x, tuple(scores)) if return_attention_scores else x

    # === Incremental decoding ===

    def memory_cache(self, memory):
        """Projected keys and values of `memory` for the cross-attention, `[B, S, H, key_dim]`."""
        attention = self.cross_attention
        return attention._key_dense(memory), attention._value_dense(memory)

    def step(self, target, cache, index, memory_mask=None):
        """Decodes one position from cached keys and values (O(T) instead of O(T^2) per step).

        Args:
            target: `[B, 1, d_model]` input at position `index`.
            cache: dict with `self_key`, `self_value` (`[B, T_max, H, key_dim]`: keys and
                values of positions `< index`, later rows unused) and `memory_key`,
                `memory_value` from `memory_cache`.
            index: int scalar tensor, the position being decoded.
            memory_mask: `[B, S]` source padding mask.

        Returns:
            `(output [B, 1, d_model], cache)` with this position's keys and values written.
        """
        new_cache = dict(cache)
        key_positions = ops.arange(ops.shape(cache["self_key"])[1])
        self_mask = ops.less_equal(key_positions, index)[None, None, :]
        cross_mask = combine_masks(memory_mask)

        def self_attend(x):
            attention = self.self_attention
            key = ops.slice_update(cache["self_key"], (0, index, 0, 0), attention._key_dense(x))
            value = ops.slice_update(cache["self_value"], (0, index, 0, 0),
                                     attention._value_dense(x))
            new_cache["self_key"], new_cache["self_value"] = key, value
            out, _ = attention._compute_attention(attention._query_dense(x), key, value,
                                                  self_mask)
            return attention._output_dense(out)

        def cross_attend(x):
            attention = self.cross_attention
            out, _ = attention._compute_attention(attention._query_dense(x), cache["memory_key"],
                                                  cache["memory_value"], cross_mask)
            return attention._output_dense(out)

        x = self._residual(target, self_attend, self.norm1, self.dropout1, False)
        x = self._residual(x, cross_attend, self.norm2, self.dropout2, False)
        x = self._residual(x, lambda h: self._feedforward(h, False), self.norm3,
                           self.dropout3, False)
        return x, new_cache
