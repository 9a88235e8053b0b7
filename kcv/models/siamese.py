"""Siamese network: one shared embedding network applied to two inputs, and their distance."""

import keras

from kcv.layers.distance import EuclideanDistance


def SiameseNetwork(embedding_model, squared=False, name="siamese_network"):
    """Builds a two-input model that embeds both inputs with the same network and outputs
    their Euclidean distance.

    The embedding network is shared (one set of weights; it appears once in the model, as the
    layer named `embedding_model.name`), so after training
    `siamese.get_layer(embedding_model.name)` is the trained embedding model, ready to embed a
    gallery or to export alone. The distance is exactly 0 for identical embeddings with a
    finite gradient there (`kcv.layers.EuclideanDistance`). Train it with
    `kcv.losses.ContrastiveLoss` on pairs labelled 1 (similar) / 0 (dissimilar).

    Args:
        embedding_model: a single-input `keras.Model` mapping an input to an embedding `[B, D]`.
        squared: output the squared distance instead (default False).
        name: model name.

    Returns:
        A functional `keras.Model` with inputs `[input_a, input_b]` (each shaped as the
        embedding model's input) and output the distance `[B, 1]`.

    Example:
        >>> inputs = keras.Input((8,))
        >>> embed = keras.Model(inputs, keras.layers.Dense(4)(inputs), name="embed")
        >>> siamese = SiameseNetwork(embed)
        >>> siamese([np.ones((2, 8)), np.ones((2, 8))]).numpy()
        array([[0.],
               [0.]], dtype=float32)

    Reference:
        Bromley et al., "Signature Verification using a Siamese Time Delay Neural Network",
        NIPS 1993; Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
        Mapping", CVPR 2006.
    """
    if not isinstance(embedding_model, keras.Model):
        raise TypeError("`embedding_model` must be a keras.Model. "
                        f"Received: embedding_model={embedding_model!r}")
    if len(embedding_model.inputs or []) != 1 or len(embedding_model.outputs or []) != 1:
        raise ValueError("`embedding_model` must have one input and one output. Received: "
                         f"inputs={embedding_model.inputs}, outputs={embedding_model.outputs}")
    spec = embedding_model.inputs[0]
    if len(embedding_model.outputs[0].shape) != 2:
        raise ValueError("`embedding_model` must output embeddings [B, D]. Received: output "
                         f"shape={tuple(embedding_model.outputs[0].shape)}")

    # === Functional Model ===
    input_a = keras.Input(spec.shape[1:], dtype=spec.dtype, name="input_a")
    input_b = keras.Input(spec.shape[1:], dtype=spec.dtype, name="input_b")
    distance = EuclideanDistance(squared=squared, name="distance")(
        [embedding_model(input_a), embedding_model(input_b)])
    return keras.Model([input_a, input_b], distance, name=name)
