"""Embeddings: the paper's sinusoidal formula in NumPy, sqrt(d_model) scaling, ViT patches."""

import math

import keras
import numpy as np
import pytest
from _numpy_transformer import positional_encoding

from kcv.layers import (
    ClassToken,
    LearnedPositionEmbedding,
    PatchEmbedding,
    SinusoidalPositionalEncoding,
    TokenAndPositionEmbedding,
)
from kcv.layers.embedding import interpolate_position_embedding, sinusoidal_positional_encoding

from kcv_testing import check_layer


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


_TOKENS = np.array([[3, 1, 0, 0], [2, 9, 5, 1]], "int32")


@pytest.mark.parametrize("factory, inputs, dtypes", [
    (lambda: SinusoidalPositionalEncoding(), _x((2, 5, 6)), None),
    (lambda: TokenAndPositionEmbedding(10, 6, 8, mask_zero=True), _TOKENS, {0: "int32"}),
    (lambda: TokenAndPositionEmbedding(10, 6, 8, positional="learned"), _TOKENS, {0: "int32"}),
    (lambda: PatchEmbedding(4, 8), _x((2, 8, 12, 3)), None),
    (lambda: ClassToken(), _x((2, 4, 6)), None),
    (lambda: LearnedPositionEmbedding(), _x((2, 4, 6)), None),
], ids=["sinusoidal", "token_sinusoidal", "token_learned", "patch", "class_token", "position"])
def test_check_layer(factory, inputs, dtypes):
    check_layer(factory, inputs, input_dtypes=dtypes)


@pytest.mark.parametrize("length, depth, start", [(7, 8, 0), (5, 7, 0), (3, 16, 11)])
def test_sinusoidal_matches_paper_formula(length, depth, start):
    got = np.asarray(sinusoidal_positional_encoding(length, depth, start_index=start))
    np.testing.assert_allclose(got, positional_encoding(length, depth, start), atol=2e-6)


def test_sinusoidal_hand_values():
    # pos 1, d = 4: [sin(1), cos(1), sin(1 / 100), cos(1 / 100)].
    got = np.asarray(sinusoidal_positional_encoding(2, 4))[1]
    np.testing.assert_allclose(got, [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                               atol=1e-7)


def test_sinusoidal_layer_broadcasts_to_input():
    got = np.asarray(SinusoidalPositionalEncoding()(np.zeros((3, 4, 6), "float32")))
    np.testing.assert_allclose(got, np.broadcast_to(positional_encoding(4, 6), (3, 4, 6)),
                               atol=2e-6)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_token_embedding_is_scaled_table_plus_position(positional):
    layer = TokenAndPositionEmbedding(10, 6, 8, positional=positional)
    got = np.asarray(layer(_TOKENS, start_index=1))
    table = np.asarray(layer.token_embedding.embeddings)
    if positional == "sinusoidal":
        pos = positional_encoding(4, 8, start=1)
    else:
        pos = np.asarray(layer.position_embedding.embeddings)[1:5]
    np.testing.assert_allclose(got, table[_TOKENS] * math.sqrt(8) + pos, atol=1e-5)
    x = _x((2, 3, 8))
    np.testing.assert_allclose(np.asarray(layer(x, reverse=True)), x @ table.T, atol=1e-5)


def test_token_embedding_mask_and_length_check():
    layer = TokenAndPositionEmbedding(10, 3, 8, mask_zero=True)
    np.testing.assert_array_equal(layer.compute_mask(_TOKENS[:, :3]), _TOKENS[:, :3] != 0)
    with pytest.raises(ValueError, match="longer than `max_length`=3"):
        layer(_TOKENS)
    with pytest.raises(ValueError, match="positional='rope'"):
        TokenAndPositionEmbedding(10, 3, 8, positional="rope")


def test_patch_embedding_is_linear_map_of_flattened_patches():
    images = _x((1, 8, 4, 3))
    layer = PatchEmbedding(4, 5)
    got = np.asarray(layer(images))
    kernel = np.asarray(layer.projection.kernel).reshape(-1, 5)  # [(kh, kw, c), D]
    bias = np.asarray(layer.projection.bias)
    patches = [images[0, 4 * i:4 * i + 4, 0:4].reshape(-1) for i in range(2)]  # row-major
    np.testing.assert_allclose(got[0], np.stack(patches) @ kernel + bias, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of `patch_size`=4"):
        PatchEmbedding(4, 5)(np.zeros((1, 6, 8, 3), "float32"))


def test_class_token_and_position_embedding():
    x = _x((2, 3, 4))
    token = ClassToken()
    out = np.asarray(token(x))
    np.testing.assert_array_equal(out[:, 1:], x)
    np.testing.assert_array_equal(out[:, 0], 0.0)  # zero-initialised as in ViT
    pos = LearnedPositionEmbedding()
    np.testing.assert_allclose(np.asarray(pos(x)), x + np.asarray(pos.embedding), atol=1e-7)


def test_interpolate_position_embedding():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1, 1 + 2 * 3, 4)).astype("float32")
    same = np.asarray(interpolate_position_embedding(table, (2, 3), (2, 3)))
    np.testing.assert_allclose(same, table, atol=1e-6)
    # Nearest-neighbour doubling repeats each patch row 2x2 (hand layout); prefix kept.
    up = np.asarray(interpolate_position_embedding(table, (2, 3), (4, 6), method="nearest"))
    grid = table[0, 1:].reshape(2, 3, 4)
    np.testing.assert_array_equal(up[0, 0], table[0, 0])
    np.testing.assert_allclose(up[0, 1:].reshape(4, 6, 4), grid.repeat(2, 0).repeat(2, 1))
    with pytest.raises(ValueError, match="needs 10"):
        interpolate_position_embedding(table, (3, 3), (4, 4))


def test_docstring_examples_run():
    import doctest

    import kcv.layers.embedding as module
    result = doctest.testmod(module, extraglobs={"keras": keras})
    assert result.failed == 0 and result.attempted > 0
