"""NumPy transcription of the Transformer equations of Vaswani et al. 2017 (Sec. 3.1-3.3, 3.5).

Weights are read from the Keras layers (MultiHeadAttention kernels `[D, H, d_k]`, output kernel
`[H, d_k, D]`); the arithmetic is written out from the paper, not from Keras.
"""

import math

import numpy as np


def positional_encoding(length, depth, start=0):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pe = np.zeros((length, depth))
    for pos in range(start, start + length):
        for j in range(depth):
            i = j // 2
            angle = pos / 10000 ** (2 * i / depth)
            pe[pos - start, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def multi_head(mha, q_in, kv_in, mask=None):
    """MultiHead(Q, K, V) = Concat(head_1..h) W^O, head_i = softmax(Q W_i^Q (K W_i^K)^T / sqrt(d_k)) V W_i^V.

    `mask` `[B, T, S]` bool (True = may attend) sets disallowed logits to -inf (Sec. 3.2.3).
    Returns the output `[B, T, D]` and the weights `[B, H, T, S]`.
    """
    wq, bq = (np.asarray(w, np.float64) for w in (mha.query_dense.kernel, mha.query_dense.bias))
    wk, bk = (np.asarray(w, np.float64) for w in (mha.key_dense.kernel, mha.key_dense.bias))
    wv, bv = (np.asarray(w, np.float64) for w in (mha.value_dense.kernel, mha.value_dense.bias))
    wo, bo = (np.asarray(w, np.float64) for w in (mha.output_dense.kernel, mha.output_dense.bias))
    heads, d_k = wq.shape[1], wq.shape[2]
    batch, t_len, s_len = q_in.shape[0], q_in.shape[1], kv_in.shape[1]
    out = np.zeros((batch, t_len, wo.shape[-1]))
    weights = np.zeros((batch, heads, t_len, s_len))
    for b in range(batch):
        head_outputs = []
        for i in range(heads):
            q = q_in[b] @ wq[:, i, :] + bq[i]
            k = kv_in[b] @ wk[:, i, :] + bk[i]
            v = kv_in[b] @ wv[:, i, :] + bv[i]
            logits = q @ k.T / math.sqrt(d_k)
            if mask is not None:
                logits = np.where(mask[b], logits, -np.inf)
            a = _softmax(logits)
            weights[b, i] = a
            head_outputs.append(a @ v)
        concat = np.concatenate(head_outputs, axis=-1)  # [T, H * d_k]
        out[b] = concat @ wo.reshape(heads * d_k, -1) + bo
    return out, weights


def feed_forward(layer, x, activation):
    """FFN(x) = act(x W1 + b1) W2 + b2 (Eq. 2, ReLU in the paper)."""
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in (layer.linear1.kernel, layer.linear1.bias,
                                                          layer.linear2.kernel, layer.linear2.bias))
    h = x @ w1 + b1
    if activation == "relu":
        h = np.maximum(h, 0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return h @ w2 + b2


def _norm(layer_norm_layer, x, eps):
    return layer_norm(x, np.asarray(layer_norm_layer.gamma, np.float64),
                      np.asarray(layer_norm_layer.beta, np.float64), eps)


def _sublayer(x, f, norm, eps, norm_first):
    """Post-LN LayerNorm(x + Sublayer(x)) (Sec. 3.1) or pre-LN x + Sublayer(LayerNorm(x))."""
    if norm_first:
        return x + f(_norm(norm, x, eps))
    return _norm(norm, x + f(x), eps)


def encoder_layer(layer, x, key_padding=None, activation="relu", norm_first=False, eps=1e-5):
    """One encoder layer: self-attention sublayer, then FFN sublayer (Sec. 3.1)."""
    mask = None if key_padding is None else np.broadcast_to(
        key_padding[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
    x = _sublayer(x, lambda h: multi_head(layer.self_attention, h, h, mask)[0], layer.norm1, eps,
                  norm_first)
    return _sublayer(x, lambda h: feed_forward(layer, h, activation), layer.norm2, eps, norm_first)


def decoder_layer(layer, y, memory, memory_padding=None, activation="relu", norm_first=False,
                  eps=1e-5):
    """One decoder layer: masked self-attention, encoder-decoder attention, FFN (Sec. 3.1)."""
    t_len, s_len = y.shape[1], memory.shape[1]
    causal = np.tril(np.ones((t_len, t_len), bool))[None].repeat(y.shape[0], 0)
    cross = None if memory_padding is None else np.broadcast_to(
        memory_padding[:, None, :], (y.shape[0], t_len, s_len))
    y = _sublayer(y, lambda h: multi_head(layer.self_attention, h, h, causal)[0], layer.norm1,
                  eps, norm_first)
    y = _sublayer(y, lambda h: multi_head(layer.cross_attention, h, memory, cross)[0],
                  layer.norm2, eps, norm_first)
    return _sublayer(y, lambda h: feed_forward(layer, h, activation), layer.norm3, eps, norm_first)


def randomize(layer, seed=0, scale=0.3):
    """Random weights everywhere (biases and LayerNorm parameters included), so no term is 0 or 1."""
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape, scale=scale).astype("float32") +
                       (1.0 if "gamma" in w.path else 0.0) for w in layer.weights])
