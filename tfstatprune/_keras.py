"""The one place that chooses which Keras tfstatprune uses.

tensorflow-model-optimization 0.8 prunes Keras 2 models only, so tfstatprune
uses ``tf_keras`` (the Keras 2 package) everywhere. TensorFlow 2.16+ ships
Keras 3 as ``tf.keras`` unless ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow is imported; a Keras 3 model passed to tfstatprune is translated to
tf_keras by :func:`require_tf_keras_model` (:mod:`tfstatprune._translate`, the
one module beside this one that knows both versions; Keras 3 is imported only
when a Keras 3 object shows up).

Every other module imports Keras from here::

    from tfstatprune._keras import keras
"""

from __future__ import annotations

import tf_keras as keras
from packaging.version import Version

__all__ = ["keras", "is_keras3_object", "require_tf_keras_model"]

_MIN_TF_KERAS = Version("2.14")
if Version(keras.__version__) < _MIN_TF_KERAS:  # pragma: no cover - install-time guard
    raise ImportError(
        f"tfstatprune needs tf_keras >= {_MIN_TF_KERAS}, found {keras.__version__}; "
        "upgrade with `pip install -U tf-keras`."
    )


def is_keras3_object(obj: object) -> bool:
    """True when ``obj`` is an instance of a class from the Keras 3 package."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__)


def require_tf_keras_model(model: object, what: str = "model", data: object = None) -> keras.Model:
    """``model`` as a tf_keras ``Model``: itself, or the translation of a Keras 3 model.

    Args:
      model: the object a user passed in.
      what: how the error message should call it.
      data: inputs to check a translation's predictions on (default: random ones).

    Raises:
      TranslationError: a Keras 3 model that cannot be translated exactly.
      TypeError: for anything that is not a Keras model at all.
    """
    if isinstance(model, keras.Model):
        return model
    if is_keras3_object(model):
        from tfstatprune._translate import to_tf_keras

        return to_tf_keras(model, data)
    raise TypeError(
        f"Expected the {what} to be a tf_keras Model (Sequential or functional), "
        f"got {type(model).__name__}."
    )
