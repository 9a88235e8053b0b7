"""The Transformer model: masks proven on logits, parameters counted by hand, decoding."""

import itertools
import os

import keras
import numpy as np
import pytest

from kcv.models import Transformer, beam_search, greedy_decode
from kcv.models.transformer import attention_scores, length_penalty

from kcv_testing import check_layer

_SMALL = dict(d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
              dim_feedforward=24, dropout=0.0)
_SRC = np.array([[5, 6, 7, 8, 0, 0], [9, 4, 3, 0, 0, 0]], "int32")
_TGT = np.array([[1, 8, 7, 6, 5], [1, 3, 4, 9, 2]], "int32")


def _model(**kwargs):
    return Transformer(12, 11, 10, **{**_SMALL, **kwargs})


def test_check_layer_post_ln():
    check_layer(lambda: _model(), [_SRC, _TGT], xla_atol=1e-4)


def test_check_layer_pre_ln_shared_embeddings():
    # TFLite is converted above for the same layer classes; here the weight-tied output
    # (reverse embedding), learned positions and final LayerNorms go through the rest.
    check_layer(lambda: Transformer(12, 12, 10, **_SMALL, norm_first=True,
                                    share_embeddings=True, positional="learned"),
                [_SRC, _TGT], tflite=False, xla_atol=1e-4)


def _hand_count(d, f, vocab_src, vocab_tgt, n_enc, n_dec, norm_first, shared):
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    ffn = d * f + f + f * d + d
    encoder = attention + ffn + 2 * 2 * d
    decoder = 2 * attention + ffn + 3 * 2 * d
    embeddings = vocab_src * d if shared else vocab_src * d + vocab_tgt * d
    output = 0 if shared else d * vocab_tgt + vocab_tgt
    final_norms = 2 * 2 * d if norm_first else 0
    return n_enc * encoder + n_dec * decoder + embeddings + output + final_norms


@pytest.mark.parametrize("norm_first, shared", [(False, False), (True, True)])
def test_parameters_counted_by_hand(norm_first, shared):
    model = Transformer(12, 12, 10, **_SMALL, norm_first=norm_first, share_embeddings=shared)
    assert model.count_params() == _hand_count(16, 24, 12, 12, 2, 2, norm_first, shared)
    names = {layer.name for layer in model.layers}
    assert ({"encoder_norm", "decoder_norm"} <= names) == norm_first  # as torch.nn.Transformer


@pytest.mark.parametrize("norm_first", [False, True])
def test_logits_at_t_ignore_later_target_tokens(norm_first):
    model = _model(norm_first=norm_first)
    base = np.asarray(model([_SRC, _TGT]))
    for t in range(_TGT.shape[1] - 1):
        changed = _TGT.copy()
        changed[:, t + 1:] = np.random.default_rng(t).integers(3, 11, size=changed[:, t + 1:].shape)
        out = np.asarray(model([_SRC, changed]))
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5)
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-4  # later ones do change


@pytest.mark.parametrize("pad_id", [0, 11])
def test_source_padding_changes_no_logit(pad_id):
    model = Transformer(12, 12, 16, **_SMALL, pad_id=pad_id)
    src = np.where(_SRC == 0, pad_id, _SRC)
    base = np.asarray(model([src, _TGT]))
    padded = np.concatenate([src, np.full((2, 7), pad_id, "int32")], axis=1)
    np.testing.assert_allclose(np.asarray(model([padded, _TGT])), base, atol=1e-5)
    # Without the mask the padding would matter: replacing it with a real token changes logits.
    unmasked = np.where(padded == pad_id, 4, padded)
    assert np.abs(np.asarray(model([unmasked, _TGT])) - base).max() > 1e-3


def test_target_padding_changes_no_real_logit():
    model = _model()
    tgt = np.array([[1, 8, 7, 0, 0]], "int32")
    base = np.asarray(model([_SRC[:1], tgt[:, :3]]))
    np.testing.assert_allclose(np.asarray(model([_SRC[:1], tgt]))[:, :3], base, atol=1e-5)


def test_length_penalty_hand_values():
    # Wu et al. 2016, Eq. 14: lp(Y) = (5 + |Y|)^a / (5 + 1)^a.
    np.testing.assert_allclose(length_penalty([1, 7, 13], 1.0), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(length_penalty(7, 0.5), np.sqrt(2.0))
    np.testing.assert_allclose(length_penalty(4, 0.0), 1.0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_uncached(norm_first):
    model = _model(norm_first=norm_first)
    cached = greedy_decode(model, _SRC, 1, 2, 8)
    plain = greedy_decode(model, _SRC, 1, 2, 8, use_cache=False)
    np.testing.assert_array_equal(cached, plain)
    tokens, scores = beam_search(model, _SRC, 1, 2, 8, beam_size=3)
    tokens_plain, scores_plain = beam_search(model, _SRC, 1, 2, 8, beam_size=3, use_cache=False)
    np.testing.assert_array_equal(tokens, tokens_plain)
    np.testing.assert_allclose(scores, scores_plain, atol=1e-5)


def _sequence_log_probs(model, src, sequences):
    """log P(seq | src) of equal-length sequences by teacher forcing the full model."""
    tgt = np.array([[1, *seq] for seq in sequences], "int32")
    logits = np.array(model([np.repeat(src, len(tgt), 0), tgt[:, :-1]]), np.float64)
    logits[:, :, 0] = -np.inf  # pad is never generated, as in the decoders
    top = logits.max(-1, keepdims=True)
    log_p = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
    return np.array([sum(log_p[b, i, tok] for i, tok in enumerate(seq))
                     for b, seq in enumerate(sequences)])


def test_greedy_picks_argmax_of_teacher_forced_logits():
    model = _model()
    tokens = greedy_decode(model, _SRC[:1], 1, 2, 6)[0]
    for t in range(1, 6):
        if tokens[t - 1] == 2:
            break
        logits = np.array(model([_SRC[:1], tokens[None, :t]]))[0, -1]
        logits[0] = -np.inf
        assert tokens[t] == np.argmax(logits)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_with_a_wide_beam_is_exhaustive_search(alpha):
    # Vocabulary {pad 0, start 1, end 2, 3, 4}, at most 3 generated tokens: every hypothesis
    # fits in a beam of 40, so beam search must return the best length-penalised sequence of
    # an exhaustive enumeration scored by teacher forcing.
    model = Transformer(5, 5, 8, **_SMALL)
    src = np.array([[3, 4, 3]], "int32")
    candidates = []
    for length in (1, 2, 3):
        seqs = [seq for seq in itertools.product([1, 2, 3, 4], repeat=length)
                if 2 not in seq[:-1]]  # nothing follows the end token
        scores = _sequence_log_probs(model, src, seqs) / length_penalty(length, alpha)
        candidates += [(score, seq, seq[-1] == 2) for score, seq in zip(scores, seqs)]
    # Unfinished sequences only count at the full length (max_length = 4 with the start).
    candidates = [c for c in candidates if c[2] or len(c[1]) == 3]
    best_score, best_seq, _ = max(candidates)
    tokens, score = beam_search(model, src, 1, 2, 4, beam_size=40, alpha=alpha)
    assert tuple(tokens[0, 1:1 + len(best_seq)]) == best_seq
    np.testing.assert_allclose(score[0], best_score, atol=1e-5)
    greedy = greedy_decode(model, src, 1, 2, 4)
    np.testing.assert_array_equal(beam_search(model, src, 1, 2, 4, beam_size=1)[0], greedy)


def test_decoding_after_keras_reload(tmp_path):
    model = _model()
    path = os.path.join(tmp_path, "t.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(greedy_decode(reloaded, _SRC, 1, 2, 7),
                                  greedy_decode(model, _SRC, 1, 2, 7))


def test_attention_scores_shapes_and_masking():
    scores = attention_scores(_model(), _SRC, _TGT)
    assert [s.shape for s in scores["decoder_cross"]] == [(2, 2, 5, 6)] * 2
    assert scores["encoder"][0].shape == (2, 2, 6, 6)
    np.testing.assert_array_equal(scores["decoder_cross"][0][1, :, :, 3:], 0.0)  # source pads
    np.testing.assert_array_equal(np.triu(scores["decoder_self"][1][0, 0], 1), 0.0)  # causal


def test_bad_arguments():
    with pytest.raises(ValueError, match="src_vocab_size=12, tgt_vocab_size=11"):
        _model(share_embeddings=True)
    with pytest.raises(ValueError, match="num_encoder_layers=0"):
        _model(num_encoder_layers=0)
    with pytest.raises(ValueError, match="beam_size=0"):
        beam_search(_model(), _SRC, 1, 2, 5, beam_size=0)
    with pytest.raises(ValueError, match=r"shape=\(6,\)"):
        greedy_decode(_model(), _SRC[0], 1, 2, 5)
