"""kcv.layers: Keras layers wrapping kcv ops and the building blocks of kcv models."""

from kcv.layers.normalization import normalization
