"""kcv.models.SiameseNetwork: shared weights, NumPy distances, a finite gradient at distance 0,
and the shared model checks (reload, mixed precision, XLA, TFLite builtins + LiteRT parity)."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.models import SiameseNetwork, siamese

from kcv_testing import check_layer


def _embedding(name="embed"):
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.UnitNormalization()(keras.layers.Dense(5)(x))
    return keras.Model(inputs, x, name=name)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((n, 8, 8, 1)).astype("float32") for _ in range(2)]


def test_model_checks():
    check_layer(lambda: SiameseNetwork(_embedding()), _images(2))


def test_one_shared_embedding_and_numpy_distance():
    embed = _embedding()
    model = SiameseNetwork(embed, name="pairs")
    assert model.get_layer("embed") is embed
    assert len(model.weights) == len(embed.weights)  # one set of weights for both inputs
    a, b = _images()
    ea, eb = np.asarray(embed(a)), np.asarray(embed(b))
    expected = np.linalg.norm(ea - eb, axis=1, keepdims=True)
    np.testing.assert_allclose(model([a, b]), expected, rtol=1e-5)
    squared = SiameseNetwork(embed, squared=True)
    np.testing.assert_allclose(squared([a, b]), expected ** 2, rtol=1e-5)


def test_identical_inputs_distance_zero_and_finite_gradients():
    model = SiameseNetwork(_embedding())
    a, _ = _images(2)
    loss_fn = kcv.losses.ContrastiveLoss(margin=1.0)
    with tf.GradientTape() as tape:
        d = model([a, a])
        loss = loss_fn(np.array([0.0, 0.0]), d)  # dissimilar label: (margin - 0)^2 each
    grads = tape.gradient(loss, model.trainable_weights)
    np.testing.assert_array_equal(np.asarray(d), 0.0)
    assert float(loss) == pytest.approx(1.0)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_contrastive_training_separates_pairs():
    rng = np.random.default_rng(1)
    protos = rng.random((2, 8, 8, 1)).astype("float32")
    first = rng.integers(0, 2, 64)
    second = rng.integers(0, 2, 64)
    noise = lambda: 0.1 * rng.normal(size=(64, 8, 8, 1)).astype("float32")  # noqa: E731
    xa, xb = protos[first] + noise(), protos[second] + noise()
    same = (first == second).astype("float32")
    model = SiameseNetwork(_embedding())
    model.compile(keras.optimizers.Adam(0.01), loss=kcv.losses.ContrastiveLoss())
    model.fit([xa, xb], same, epochs=30, batch_size=64, verbose=0)
    d = np.asarray(model([xa, xb]))[:, 0]
    assert d[same == 1].max() < d[same == 0].min()


def test_docstring_example_runs():
    result = doctest.testmod(siamese, extraglobs={"np": np, "keras": keras})
    assert result.attempted >= 4 and result.failed == 0


def test_errors():
    with pytest.raises(TypeError, match="`embedding_model` must be a keras.Model"):
        SiameseNetwork(keras.layers.Dense(3))
    inputs = keras.Input((4,))
    two = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match="`embedding_model` must have one input and one output"):
        SiameseNetwork(two)
    image = keras.Input((4, 4, 1))
    with pytest.raises(ValueError, match=r"must output embeddings \[B, D\].*\(None, 4, 4, 2\)"):
        SiameseNetwork(keras.Model(image, keras.layers.Conv2D(2, 1)(image)))
