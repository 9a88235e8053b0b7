"""The Transformer encoder-decoder (Vaswani et al. 2017) with greedy and beam-search decoding.

`Transformer` builds a functional model from `[src_tokens, tgt_tokens]` to logits;
`greedy_decode` and `beam_search` generate from it, by default with an incremental decoder
that keeps the keys and values of earlier steps (each step attends over the cache instead of
re-running the prefix).
"""

import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from kcv.layers._checks import check_positive_int as _check_positive_int
from kcv.layers.embedding import TokenAndPositionEmbedding
from kcv.layers.transformer import PaddingMask, TransformerDecoderLayer, TransformerEncoderLayer


def Transformer(src_vocab_size, tgt_vocab_size, max_length, d_model=512, num_heads=8,
                num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048, dropout=0.1,
                norm_first=False, pad_id=0, share_embeddings=False, activation="relu",
                layer_norm_epsilon=1e-5, positional="sinusoidal", name="transformer"):
    """Builds the encoder-decoder Transformer of Vaswani et al. 2017 as a functional model.

    Token embeddings are scaled by `sqrt(d_model)` and summed with the positional encoding,
    then dropout (Sec. 3.4-3.5, 5.4); `num_encoder_layers` `TransformerEncoderLayer`s and
    `num_decoder_layers` `TransformerDecoderLayer`s (masked self-attention, encoder-decoder
    attention, FFN) follow; a linear layer gives the logits. Token `pad_id` is masked as a key
    everywhere (encoder self-attention, decoder self-attention, encoder-decoder attention);
    decoder self-attention is causal. With `norm_first=True` the encoder and decoder stacks end
    with a LayerNorm, as `torch.nn.Transformer` (pre-LN needs it; post-LN ends normalised).

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes.
        max_length: longest source or target sequence (positional table size).
        d_model: model width. Default 512.
        num_heads: attention heads (key_dim = d_model / num_heads). Default 8.
        num_encoder_layers, num_decoder_layers: stack depths. Default 6 each.
        dim_feedforward: FFN hidden size. Default 2048.
        dropout: dropout rate everywhere. Default 0.1.
        norm_first: pre-LN layers (and final LayerNorms). Default False (post-LN, the paper).
        pad_id: padding token id, in source and target. Default 0.
        share_embeddings: one token table for source, target and the output projection
            (Sec. 3.4); needs `src_vocab_size == tgt_vocab_size`. Default False.
        activation: FFN activation. Default "relu".
        layer_norm_epsilon: LayerNorm epsilon. Default 1e-5.
        positional: "sinusoidal" (default) or "learned".
        name: model name.

    Returns:
        A `keras.Model` from `[src_tokens int32 [B, S], tgt_tokens int32 [B, T]]` to logits
        float32 `[B, T, tgt_vocab_size]`; train it with teacher forcing (target shifted right).

    Example:
        >>> model = Transformer(20, 20, 16, d_model=32, num_heads=4, num_encoder_layers=1,
        ...                     num_decoder_layers=1, dim_feedforward=64)
        >>> src = np.array([[3, 4, 5, 0]], "int32"); tgt = np.array([[1, 6, 7]], "int32")
        >>> model([src, tgt]).shape
        TensorShape([1, 3, 20])

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    for arg, value in dict(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                           max_length=max_length, num_encoder_layers=num_encoder_layers,
                           num_decoder_layers=num_decoder_layers).items():
        _check_positive_int(arg, value)
    if share_embeddings and src_vocab_size != tgt_vocab_size:
        raise ValueError(f"`share_embeddings=True` needs src_vocab_size == tgt_vocab_size. "
                         f"Received: src_vocab_size={src_vocab_size}, "
                         f"tgt_vocab_size={tgt_vocab_size}")
    layer_args = dict(d_model=d_model, num_heads=num_heads, dim_feedforward=dim_feedforward,
                      dropout=dropout, activation=activation, norm_first=norm_first,
                      layer_norm_epsilon=layer_norm_epsilon)
    src = keras.Input((None,), dtype="int32", name="src_tokens")
    tgt = keras.Input((None,), dtype="int32", name="tgt_tokens")

    def embedding(vocab, name):
        return TokenAndPositionEmbedding(vocab, max_length, d_model, positional=positional,
                                         name=name)

    src_embedding = embedding(src_vocab_size, "shared_embedding" if share_embeddings
                              else "src_embedding")
    tgt_embedding = src_embedding if share_embeddings else embedding(tgt_vocab_size,
                                                                     "tgt_embedding")
    src_mask = PaddingMask(pad_id, name="src_padding_mask")(src)
    tgt_mask = PaddingMask(pad_id, name="tgt_padding_mask")(tgt)

    x = keras.layers.Dropout(dropout, name="src_dropout")(src_embedding(src))
    for i in range(num_encoder_layers):
        x = TransformerEncoderLayer(**layer_args, name=f"encoder_layer_{i}")(x, mask=src_mask)
    if norm_first:
        x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="encoder_norm")(x)
    memory = x

    y = keras.layers.Dropout(dropout, name="tgt_dropout")(tgt_embedding(tgt))
    for i in range(num_decoder_layers):
        y = TransformerDecoderLayer(**layer_args, name=f"decoder_layer_{i}")(
            y, memory, target_mask=tgt_mask, memory_mask=src_mask)
    if norm_first:
        y = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="decoder_norm")(y)
    if share_embeddings:
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
            tgt_embedding(y, reverse=True))
    else:
        logits = keras.layers.Dense(tgt_vocab_size, dtype="float32", name="logits")(y)
    return keras.Model([src, tgt], logits, name=name)


class _Parts:
    """The layers of a `Transformer` model, found by name, run piecewise for decoding."""

    def __init__(self, model):
        names = {layer.name for layer in model.layers}
        shared = "shared_embedding" in names
        self.src_embedding = model.get_layer("shared_embedding" if shared else "src_embedding")
        self.tgt_embedding = model.get_layer("shared_embedding" if shared else "tgt_embedding")
        self.pad_id = model.get_layer("src_padding_mask").pad_id
        self.encoder_layers = _numbered(model, names, "encoder_layer_")
        self.decoder_layers = _numbered(model, names, "decoder_layer_")
        self.encoder_norm = model.get_layer("encoder_norm") if "encoder_norm" in names else None
        self.decoder_norm = model.get_layer("decoder_norm") if "decoder_norm" in names else None
        self.logits = None if shared else model.get_layer("logits")
        self.vocab_size = self.tgt_embedding.vocab_size

    def encode(self, src):
        mask = tf.not_equal(src, self.pad_id)
        x = self.src_embedding(src)
        for layer in self.encoder_layers:
            x = layer(x, mask=mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, mask

    def _project(self, y):
        if self.decoder_norm is not None:
            y = self.decoder_norm(y)
        if self.logits is None:
            return tf.cast(self.tgt_embedding(y, reverse=True), "float32")
        return tf.cast(self.logits(y), "float32")

    def decode(self, tgt, memory, src_mask, return_attention_scores=False):
        y = self.tgt_embedding(tgt)
        scores = []
        for layer in self.decoder_layers:
            out = layer(y, memory, target_mask=tf.not_equal(tgt, self.pad_id),
                        memory_mask=src_mask, return_attention_scores=return_attention_scores)
            y, s = out if return_attention_scores else (out, None)
            scores.append(s)
        logits = self._project(y)
        return (logits, scores) if return_attention_scores else logits

    def init_cache(self, memory, max_length):
        batch = tf.shape(memory)[0]
        caches = []
        for layer in self.decoder_layers:
            key, value = layer.memory_cache(memory)
            zeros = tf.zeros(tf.stack([batch, max_length, key.shape[2], key.shape[3]]),
                             key.dtype)
            caches.append({"self_key": zeros, "self_value": zeros, "memory_key": key,
                           "memory_value": value})
        return caches

    def step(self, tokens, index, caches, src_mask):
        y = self.tgt_embedding(tokens[:, None], start_index=index)
        new_caches = []
        for layer, cache in zip(self.decoder_layers, caches):
            y, cache = layer.step(y, cache, index, memory_mask=src_mask)
            new_caches.append(cache)
        return self._project(y)[:, 0], new_caches


def _numbered(model, names, prefix):
    count = sum(1 for n in names if n.startswith(prefix))
    return [model.get_layer(f"{prefix}{i}") for i in range(count)]


_STEP_FUNCTIONS = weakref.WeakKeyDictionary()


def _parts_and_step(model):
    """The model's `_Parts` and a `tf.function` of one cached step, traced once per model."""
    if model not in _STEP_FUNCTIONS:
        parts = _Parts(model)
        _STEP_FUNCTIONS[model] = (parts, tf.function(parts.step, reduce_retracing=True))
    return _STEP_FUNCTIONS[model]


def _check_decode_args(src_tokens, start_id, end_id, max_length, beam_size=1):
    src = np.asarray(src_tokens)
    if src.ndim != 2 or not np.issubdtype(src.dtype, np.integer):
        raise ValueError(f"`src_tokens` must be an integer array [B, S]. "
                         f"Received: shape={src.shape}, dtype={src.dtype}")
    for arg, value in dict(max_length=max_length, beam_size=beam_size).items():
        _check_positive_int(arg, value)
    for arg, value in dict(start_id=start_id, end_id=end_id).items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"`{arg}` must be a non-negative integer. Received: {arg}={value!r}")
    return tf.constant(src, tf.int32)


class _Decoder:
    """Next-token log-probabilities for a growing `[N, t + 1]` prefix, cached or not.

    `pad_id` gets probability 0: a generated padding token would be masked as a key by the
    full decoder, so sequences never contain it before they end.
    """

    def __init__(self, model, src, max_length, use_cache, repeats=1):
        self.parts, self.step_fn = _parts_and_step(model)
        memory, src_mask = self.parts.encode(src)
        self.memory = tf.repeat(memory, repeats, axis=0)
        self.src_mask = tf.repeat(src_mask, repeats, axis=0)
        self.use_cache = use_cache
        self.caches = self.parts.init_cache(self.memory, max_length) if use_cache else None

    def log_probs(self, tokens, t):
        """`tokens`: int `[N, >= t + 1]`; returns float64 `[N, V]` for position `t + 1`."""
        if self.use_cache:
            logits, self.caches = self.step_fn(tf.constant(tokens[:, t], tf.int32),
                                               tf.constant(t, tf.int32), self.caches,
                                               self.src_mask)
        else:
            prefix = tf.constant(tokens[:, :t + 1], tf.int32)
            with warnings.catch_warnings():  # Keras warns of a softmax over 1 key at t = 0
                warnings.simplefilter("ignore", UserWarning)
                logits = self.parts.decode(prefix, self.memory, self.src_mask)[:, -1]
        logits = np.array(logits, np.float64)
        logits[:, self.parts.pad_id] = -np.inf  # padding is never generated
        return tf.nn.log_softmax(logits).numpy()

    def reorder(self, indices):
        """Keeps the cache rows `indices` (beam search), memory rows being equal per example."""
        if self.use_cache:
            self.caches = [{**c, "self_key": tf.gather(c["self_key"], indices),
                            "self_value": tf.gather(c["self_value"], indices)}
                           for c in self.caches]


def greedy_decode(model, src_tokens, start_id, end_id, max_length, use_cache=True):
    """Greedy decoding: at each step the most probable next token.

    Args:
        model: a model built by `Transformer` (or reloaded from `.keras`).
        src_tokens: int `[B, S]` source tokens, padded with the model's `pad_id`.
        start_id: token that starts every target sequence.
        end_id: token that ends a sequence; later positions are filled with `pad_id`.
        max_length: length of the returned sequences, `start_id` included.
        use_cache: incremental decoding with cached keys and values (default); False re-runs
            the decoder on the whole prefix at each step (same tokens, O(T^2) per step).

    Returns:
        int32 `[B, max_length]` numpy array: `start_id`, the generated tokens up to and
        including `end_id`, then `pad_id`.

    Example:
        >>> model = Transformer(12, 12, 8, d_model=16, num_heads=2, num_encoder_layers=1,
        ...                     num_decoder_layers=1, dim_feedforward=32)
        >>> greedy_decode(model, np.array([[3, 4, 5]]), start_id=1, end_id=2,
        ...               max_length=6).shape
        (1, 6)

    Reference:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    src = _check_decode_args(src_tokens, start_id, end_id, max_length)
    decoder = _Decoder(model, src, max_length, use_cache)
    pad_id = decoder.parts.pad_id
    batch = src.shape[0]
    tokens = np.full((batch, max_length), pad_id, np.int32)
    tokens[:, 0] = start_id
    finished = np.zeros(batch, bool)
    for t in range(max_length - 1):
        best = np.argmax(decoder.log_probs(tokens, t), axis=-1)
        tokens[:, t + 1] = np.where(finished, pad_id, best)
        finished |= best == end_id
        if finished.all():
            break
    return tokens


def length_penalty(length, alpha):
    """GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al. 2016, Eq. 14)."""
    return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


def beam_search(model, src_tokens, start_id, end_id, max_length, beam_size=4, alpha=0.6,
                use_cache=True):
    """Beam search with the GNMT length penalty.

    Keeps the `beam_size` hypotheses with the best score `log P(Y | X) / lp(|Y|)`,
    `lp(|Y|) = ((5 + |Y|) / 6) ** alpha` (Wu et al. 2016, Eq. 14; `|Y|` counts the generated
    tokens, `end_id` included). A hypothesis that produced `end_id` stays in the beam with its
    final score; the search stops when every beam has ended or at `max_length`.

    Args:
        model, src_tokens, start_id, end_id, max_length, use_cache: as `greedy_decode`.
        beam_size: hypotheses kept per example. Default 4.
        alpha: length-penalty exponent; 0 ranks by plain log-probability. Default 0.6 (GNMT's
            range 0.6-0.7).

    Returns:
        `(tokens, scores)`: int32 `[B, max_length]` best hypotheses laid out as
        `greedy_decode`'s, and float64 `[B]` their length-penalised log-probabilities.

    Example:
        >>> model = Transformer(12, 12, 8, d_model=16, num_heads=2, num_encoder_layers=1,
        ...                     num_decoder_layers=1, dim_feedforward=32)
        >>> tokens, scores = beam_search(model, np.array([[3, 4, 5]]), 1, 2, 6, beam_size=3)
        >>> tokens.shape, scores.shape
        ((1, 6), (1,))

    Reference:
        Wu et al., "Google's Neural Machine Translation System", arXiv:1609.08144, 2016.
    """
    src = _check_decode_args(src_tokens, start_id, end_id, max_length, beam_size)
    batch, k = src.shape[0], beam_size
    decoder = _Decoder(model, src, max_length, use_cache, repeats=k)
    pad_id, vocab = decoder.parts.pad_id, decoder.parts.vocab_size
    tokens = np.full((batch, k, max_length), pad_id, np.int32)
    tokens[:, :, 0] = start_id
    log_prob = np.full((batch, k), -np.inf)
    log_prob[:, 0] = 0.0  # one live hypothesis at first, so beams do not start as copies
    lengths = np.zeros((batch, k), np.int64)
    finished = np.zeros((batch, k), bool)
    for t in range(max_length - 1):
        step = decoder.log_probs(tokens.reshape(batch * k, max_length), t).reshape(batch, k,
                                                                                   vocab)
        candidates = log_prob[:, :, None] + step
        ended = np.full(vocab, -np.inf)
        ended[pad_id] = 0.0  # a finished hypothesis continues only with padding, at no cost
        candidates = np.where(finished[:, :, None], log_prob[:, :, None] + ended, candidates)
        new_lengths = np.where(finished, lengths, t + 1)
        scores = candidates / length_penalty(new_lengths, alpha)[:, :, None]
        flat = scores.reshape(batch, k * vocab)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        beams, words = top // vocab, (top % vocab).astype(np.int32)
        rows = np.arange(batch)[:, None]
        tokens = tokens[rows, beams]
        tokens[:, :, t + 1] = words
        log_prob = candidates.reshape(batch, k * vocab)[rows, top]
        was_finished = finished[rows, beams]
        lengths = new_lengths[rows, beams]
        finished = was_finished | (words == end_id)
        decoder.reorder(tf.constant((rows * k + beams).reshape(-1), tf.int32))
        if finished.all():
            break
    final = log_prob / length_penalty(lengths, alpha)
    best = np.argmax(final, axis=1)
    rows = np.arange(batch)
    return tokens[rows, best], final[rows, best]


def attention_scores(model, src_tokens, tgt_tokens):
    """Attention weights of every layer of a `Transformer` model, for plots.

    Args:
        model: a model built by `Transformer`.
        src_tokens: int `[B, S]`; tgt_tokens: int `[B, T]` (teacher-forced target).

    Returns:
        A dict of lists (one array per layer): "encoder" `[B, H, S, S]`, "decoder_self"
        `[B, H, T, T]` and "decoder_cross" `[B, H, T, S]`.
    """
    parts = _Parts(model)
    src = tf.constant(np.asarray(src_tokens), tf.int32)
    mask = tf.not_equal(src, parts.pad_id)
    x, encoder = parts.src_embedding(src), []
    for layer in parts.encoder_layers:
        x, s = layer(x, mask=mask, return_attention_scores=True)
        encoder.append(np.asarray(s))
    if parts.encoder_norm is not None:
        x = parts.encoder_norm(x)
    _, scores = parts.decode(tf.constant(np.asarray(tgt_tokens), tf.int32), x, mask,
                             return_attention_scores=True)
    return {"encoder": encoder, "decoder_self": [np.asarray(s[0]) for s in scores],
            "decoder_cross": [np.asarray(s[1]) for s in scores]}
