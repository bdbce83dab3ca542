"""The one place that chooses which Keras tfstatprune uses.

tensorflow-model-optimization 0.8 prunes Keras 2 models only, so tfstatprune
uses ``tf_keras`` (the Keras 2 package) everywhere. TensorFlow 2.16+ ships
Keras 3 as ``tf.keras`` unless ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow is imported; a Keras 3 model passed to tfstatprune is translated to
tf_keras by :func:`tfstatprune._translate.require_tf_keras_model` (the one module
beside this one that knows both versions; it imports this one, never the other
way round; Keras 3 is imported only when a Keras 3 object shows up).

Every other module imports Keras from here::

    from tfstatprune._keras import keras
"""

from __future__ import annotations

import tf_keras as keras
from packaging.version import Version

__all__ = ["keras", "is_keras3_object"]

_MIN_TF_KERAS = Version("2.14")
if Version(keras.__version__) < _MIN_TF_KERAS:  # pragma: no cover - install-time guard
    raise ImportError(
        f"tfstatprune needs tf_keras >= {_MIN_TF_KERAS}, found {keras.__version__}; "
        "upgrade with `pip install -U tf-keras`."
    )


def is_keras3_object(obj: object) -> bool:
    """True when ``obj`` is an instance of a class from the Keras 3 package."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__)
