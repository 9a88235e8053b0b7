"""kcv: Keras 3 / TensorFlow computer-vision ops, layers, models, losses and training tools.

kcv runs on the TensorFlow backend of Keras 3 only: its ops are TensorFlow functions with
hand-written gradients that convert to TFLite builtins. Importing it with another backend
selected fails at once with an explanation instead of failing later deep inside a layer.
"""

import os as _os

_backend = _os.environ.get("KERAS_BACKEND")
if _backend is not None and _backend.strip().lower() != "tensorflow":
    raise ImportError(
        "kcv requires the TensorFlow backend of Keras 3, but KERAS_BACKEND="
        f"{_backend!r}. Unset KERAS_BACKEND or set KERAS_BACKEND=tensorflow before importing kcv."
    )

import keras as _keras  # noqa: E402

if _keras.backend.backend() != "tensorflow":  # e.g. set in ~/.keras/keras.json
    raise ImportError(
        "kcv requires the TensorFlow backend of Keras 3, but Keras is configured with backend "
        f"{_keras.backend.backend()!r} (see ~/.keras/keras.json). Set KERAS_BACKEND=tensorflow."
    )

from kcv import data, layers, losses, metrics, models, training, utils  # noqa: E402

__version__ = "0.1.0"

__all__ = ["data", "layers", "losses", "metrics", "models", "training", "utils", "__version__"]
