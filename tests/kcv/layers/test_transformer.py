"""Transformer encoder/decoder layers against a NumPy transcription of Vaswani et al. 2017."""

import os

import keras
import numpy as np
import pytest
from _numpy_transformer import decoder_layer, encoder_layer, randomize

from kcv.layers import (
    PaddingMask,
    TokenAndPositionEmbedding,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)

from kcv_testing import check_layer


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Post-LN for the encoder, pre-LN for the decoder: both residual paths (shared code) pass the
# routine without paying for four ~45 s runs.
def test_encoder_check_layer():
    check_layer(lambda: TransformerEncoderLayer(16, 4, 32, activation="gelu"), _x((2, 5, 16)))


def test_decoder_check_layer():
    check_layer(lambda: TransformerDecoderLayer(16, 4, 32, norm_first=True),
                [_x((2, 4, 16)), _x((2, 6, 16), seed=1)])


def test_padding_mask_check_layer():
    tokens = np.array([[3, 1, 0, 0], [2, 0, 5, 1]], "int32")
    model = check_layer(lambda: PaddingMask(pad_id=1), tokens, input_dtypes={0: "int32"})
    np.testing.assert_array_equal(model(tokens), tokens != 1)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_numpy_paper_equations(norm_first, activation):
    x = _x((2, 5, 8))
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=activation,
                                    norm_first=norm_first)
    layer(x)
    randomize(layer)
    got = np.asarray(layer(x, mask=padding))
    expected = encoder_layer(layer, x.astype(np.float64), padding, activation, norm_first)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_decoder_layer_matches_numpy_paper_equations(norm_first):
    y, memory = _x((2, 4, 8)), _x((2, 6, 8), seed=1)
    padding = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    layer = TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=norm_first)
    layer(y, memory)
    randomize(layer, seed=3)
    got = np.asarray(layer(y, memory, memory_mask=padding))
    expected = decoder_layer(layer, y.astype(np.float64), memory.astype(np.float64), padding,
                             norm_first=norm_first)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_decoder_order_is_self_then_cross_then_ffn():
    # Swapping the two attention sublayers (a common slip) changes the output: the NumPy
    # reference in the paper's order agrees, a reference in the swapped order does not.
    y, memory = _x((1, 3, 8)), _x((1, 4, 8), seed=1)
    layer = TransformerDecoderLayer(8, 2, 12, dropout=0.0)
    layer(y, memory)
    randomize(layer, seed=5)
    got = np.asarray(layer(y, memory))
    layer.self_attention, layer.cross_attention = layer.cross_attention, layer.self_attention
    swapped = decoder_layer(layer, y.astype(np.float64), memory.astype(np.float64))
    assert np.abs(got - swapped).max() > 1e-2


def test_implicit_keras_mask_is_the_padding_mask():
    # mask_zero=True embeddings: the real positions' outputs equal those of the unpadded
    # sequence, and equal the explicit-mask call.
    tokens = np.array([[4, 7, 9, 0, 0]], "int32")
    embed = TokenAndPositionEmbedding(12, 8, 8, mask_zero=True)
    enc = TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    dec = TransformerDecoderLayer(8, 2, 16, dropout=0.0)
    src = keras.Input((None,), dtype="int32")
    memory = enc(embed(src))
    model = keras.Model(src, [memory, dec(embed(src), memory)])
    padded_memory, padded_out = (np.asarray(o) for o in model(tokens))
    short_memory, short_out = (np.asarray(o) for o in model(tokens[:, :3]))
    np.testing.assert_allclose(padded_memory[:, :3], short_memory, atol=1e-5)
    np.testing.assert_allclose(padded_out[:, :3], short_out, atol=1e-5)
    explicit = enc(embed(tokens), mask=tokens != 0)
    np.testing.assert_allclose(padded_memory[:, :3], np.asarray(explicit)[:, :3], atol=1e-5)


def test_causal_mask_hides_the_future():
    y, memory = _x((1, 5, 8)), _x((1, 3, 8), seed=1)
    layer = TransformerDecoderLayer(8, 2, 16, dropout=0.0)
    base = np.asarray(layer(y, memory))
    changed = y.copy()
    changed[:, 3:] += 5.0
    out = np.asarray(layer(changed, memory))
    np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-6)
    assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-3


def test_attention_scores_are_masked_distributions():
    x = _x((2, 5, 8))
    padding = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    _, scores = TransformerEncoderLayer(8, 2, 16)(x, mask=padding, return_attention_scores=True)
    scores = np.asarray(scores)
    assert scores.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(scores[0, :, :, 2:], 0.0)


def test_cached_step_equals_full_decoder():
    y, memory = _x((2, 4, 8)), _x((2, 5, 8), seed=1)
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = TransformerDecoderLayer(8, 2, 16, dropout=0.0, norm_first=True)
    full = np.asarray(layer(y, memory, memory_mask=padding))
    key, value = layer.memory_cache(memory)
    zeros = np.zeros((2, 4, 2, 4), "float32")
    cache = {"self_key": zeros, "self_value": zeros, "memory_key": key, "memory_value": value}
    for t in range(4):
        out, cache = layer.step(y[:, t:t + 1], cache, t, memory_mask=padding)
        np.testing.assert_allclose(np.asarray(out)[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=10, num_heads=4, dim_feedforward=8), "divisible by `num_heads`"),
    (dict(d_model=8, num_heads=0, dim_feedforward=8), "num_heads=0"),
    (dict(d_model=8, num_heads=2, dim_feedforward=8, dropout=1.0), "dropout=1.0"),
    (dict(d_model=8, num_heads=2, dim_feedforward=8, activation="nope"), "activation='nope'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerEncoderLayer(**kwargs)


def test_wrong_width_input():
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 3, 6\)"):
        TransformerEncoderLayer(8, 2, 16)(np.zeros((2, 3, 6), "float32"))
    with pytest.raises(ValueError, match="pad_id=-1"):
        PaddingMask(-1)


_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures",
                         "torch_transformer_layers.npz")


def _load_torch_attention(mha, f, prefix, d=8, heads=2):
    """torch in_proj (q, k, v stacked, y = x W^T + b) and out_proj into a Keras MHA."""
    w, b = f[f"{prefix}.in_proj_weight"], f[f"{prefix}.in_proj_bias"]
    kernels = [w[i * d:(i + 1) * d].T.reshape(d, heads, d // heads) for i in range(3)]
    biases = [b[i * d:(i + 1) * d].reshape(heads, d // heads) for i in range(3)]
    out_w = f[f"{prefix}.out_proj.weight"].T.reshape(heads, d // heads, d)
    for dense, kernel, bias in zip((mha.query_dense, mha.key_dense, mha.value_dense),
                                   kernels, biases):
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
    mha.output_dense.kernel.assign(out_w)
    mha.output_dense.bias.assign(f[f"{prefix}.out_proj.bias"])


def _load_torch_rest(layer, f, prefix, norms):
    layer.linear1.kernel.assign(f[f"{prefix}/linear1.weight"].T)
    layer.linear1.bias.assign(f[f"{prefix}/linear1.bias"])
    layer.linear2.kernel.assign(f[f"{prefix}/linear2.weight"].T)
    layer.linear2.bias.assign(f[f"{prefix}/linear2.bias"])
    for i in range(1, norms + 1):
        norm = getattr(layer, f"norm{i}")
        norm.gamma.assign(f[f"{prefix}/norm{i}.weight"])
        norm.beta.assign(f[f"{prefix}/norm{i}.bias"])


@pytest.mark.parametrize("tag", ["post", "pre"])
def test_matches_torch_fixtures(tag):
    # Fixtures from torch.nn.TransformerEncoderLayer / DecoderLayer with random weights
    # (tools/make_transformer_fixtures.py); torch marks padding with True, Keras real tokens.
    f = np.load(_FIXTURES)
    src, tgt, padding = f["src"], f["tgt"], ~f["src_padding"]
    enc = TransformerEncoderLayer(8, 2, 12, dropout=0.0, norm_first=tag == "pre")
    dec = TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=tag == "pre")
    enc(src)
    dec(tgt, src)
    _load_torch_attention(enc.self_attention, f, f"{tag}/enc/self_attn")
    _load_torch_rest(enc, f, f"{tag}/enc", 2)
    _load_torch_attention(dec.self_attention, f, f"{tag}/dec/self_attn")
    _load_torch_attention(dec.cross_attention, f, f"{tag}/dec/multihead_attn")
    _load_torch_rest(dec, f, f"{tag}/dec", 3)
    got = np.asarray(enc(src, mask=padding))
    np.testing.assert_allclose(got[padding], f[f"{tag}/enc_out"][padding], atol=1e-5)
    got = np.asarray(dec(tgt, src, memory_mask=padding))
    np.testing.assert_allclose(got, f[f"{tag}/dec_out"], atol=1e-5)
