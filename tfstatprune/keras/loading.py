"""``load_model``: a saved model file, whichever Keras wrote it."""

from __future__ import annotations

import os
from typing import Any

from tfstatprune._keras import keras
from tfstatprune._translate import (
    _keras3,
    check_keras_version,
    saved_keras_version,
    to_keras3,
    to_tf_keras,
)
from tfstatprune.keras.api import prune_scope

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike[str], *, compile: bool = True, keras_version: int | None = None
) -> Any:
    """Load a ``.keras`` / ``.h5`` model written by Keras 3 or by tf_keras.

    A file written by Keras 3 loads with Keras 3 (the user need not import
    tf_keras) and every tfstatprune entry point takes the result; a tf_keras
    file loads with tf_keras, pruning wrappers included
    (:func:`tfstatprune.prune_scope`).

    Args:
      path: the model file.
      compile: also restore the optimizer and loss, as ``load_model`` does.
      keras_version: None: the Keras that wrote the file; 2: a tf_keras model
        (translated from Keras 3 if need be, predictions checked); 3: a Keras 3
        model.
    """
    check_keras_version(keras_version)
    written = saved_keras_version(path)
    if written == 3:
        model = _keras3().saving.load_model(path, compile=compile)
    else:
        with prune_scope():
            model = keras.models.load_model(path, compile=compile)
    if keras_version == 2:
        return to_tf_keras(model)
    if keras_version == 3:
        return to_keras3(model)
    return model
