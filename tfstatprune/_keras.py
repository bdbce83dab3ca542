"""The one place that chooses which Keras tfstatprune uses.

tensorflow-model-optimization 0.8 prunes Keras 2 models only, so tfstatprune
uses ``tf_keras`` (the Keras 2 package) everywhere. TensorFlow 2.16+ ships
Keras 3 as ``tf.keras`` unless ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow is imported; a Keras 3 model passed to tfstatprune gets
:func:`require_tf_keras_model`'s error, which says how to fix it.

Every other module imports Keras from here::

    from tfstatprune._keras import keras
"""

from __future__ import annotations

import tf_keras as keras
from packaging.version import Version

__all__ = ["keras", "require_tf_keras_model", "KERAS3_HELP"]

_MIN_TF_KERAS = Version("2.14")
if Version(keras.__version__) < _MIN_TF_KERAS:  # pragma: no cover - install-time guard
    raise ImportError(
        f"tfstatprune needs tf_keras >= {_MIN_TF_KERAS}, found {keras.__version__}; "
        "upgrade with `pip install -U tf-keras`."
    )

KERAS3_HELP = (
    "tfstatprune (like tensorflow-model-optimization) prunes tf_keras (Keras 2) "
    "models, but this is a Keras 3 model. Fix it in one of two ways: build the "
    "model with `import tf_keras as keras` (same API), or set the environment "
    "variable TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported so that "
    "`tf.keras` is tf_keras. A saved Keras 3 model can be rebuilt in tf_keras "
    "from its architecture and loaded with `model.set_weights(...)`."
)


def _is_keras3_object(obj: object) -> bool:
    """True when ``obj`` is an instance of a class from the Keras 3 package."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__)


def require_tf_keras_model(model: object, what: str = "model") -> keras.Model:
    """Return ``model`` if it is a tf_keras ``Model``; raise a helpful error otherwise.

    Args:
      model: the object a user passed in.
      what: how the error message should call it.

    Raises:
      TypeError: for a Keras 3 model (with :data:`KERAS3_HELP`), or for anything
        that is not a Keras model at all.
    """
    if isinstance(model, keras.Model):
        return model
    if _is_keras3_object(model):
        raise TypeError(KERAS3_HELP)
    raise TypeError(
        f"Expected the {what} to be a tf_keras Model (Sequential or functional), "
        f"got {type(model).__name__}."
    )
