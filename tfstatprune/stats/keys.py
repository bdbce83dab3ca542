"""Stable keys for a model's weights: the layer path and the weight's role.

Statistics, scores and masks are keyed by strings a user can read and that
survive saving and loading. ``variable.name`` is not such a key: after a
``.keras`` reload every variable is named by its role alone (``kernel:0``), so
two layers' kernels share a name. The key of a weight is instead the names of
the layers from the root down to the layer that owns it -- models and wrappers
left out, so a wrapped layer's kernel keeps its key -- then its own name's
last part (``kernel:0``, ``bias:0``, ``recurrent_kernel:0``): ``fc1/kernel:0``
for a Dense layer ``fc1`` (its ``variable.name`` in a freshly built model),
``mha/query/kernel:0`` for the query projection of a MultiHeadAttention layer
``mha``. A weight owned by a wrapper itself (tfmot's ``mask``) is prefixed by
the wrapper's name.

Example:
  >>> from tfstatprune._keras import keras
  >>> model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,), name="fc")])
  >>> keys = weight_keys(model)
  >>> [keys[w] for w in model.weights]
  ['fc/kernel:0', 'fc/bias:0']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["WeightKeys", "key_of", "weight_keys"]


class WeightKeys(Mapping):
    """``{variable: key}`` for the weights under one root layer or model (see module)."""

    def __init__(self, keys: dict[Any, str]) -> None:
        self._keys = keys

    def __getitem__(self, variable: tf.Variable) -> str:
        try:
            return self._keys[variable.ref()]
        except KeyError:
            raise KeyError(f"weight {variable.name} is not a weight of this model") from None

    def __contains__(self, variable: object) -> bool:
        return hasattr(variable, "ref") and variable.ref() in self._keys

    def __iter__(self) -> Iterator[Any]:
        return (ref.deref() for ref in self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _own_weights(layer: keras.layers.Layer) -> list[tf.Variable]:
    return list(getattr(layer, "_trainable_weights", [])) + list(
        getattr(layer, "_non_trainable_weights", [])
    )


def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=False))


def weight_keys(root: keras.layers.Layer) -> WeightKeys:
    """The stable key of every weight under ``root`` (a model or a layer).

    A weight reachable along several paths (a shared layer) gets the first
    one, a layer's own before a wrapper's; two weights of one layer with the
    same last name part get ``#1``, ``#2``, ... after the later ones.
    """
    found: dict[Any, str] = {}
    taken: set[str] = set()

    def visit(layer: keras.layers.Layer, path: tuple[str, ...]) -> None:
        transparent = isinstance(layer, (keras.Model, keras.layers.Wrapper))
        inner = path if transparent else (*path, layer.name)
        for child in _children(layer):
            visit(child, inner)
        owner = (*path, layer.name) if isinstance(layer, keras.layers.Wrapper) else inner
        for variable in _own_weights(layer):
            if variable.ref() in found:
                continue
            key = "/".join((*owner, variable.name.split("/")[-1]))
            base, index = key, 0
            while key in taken:
                index += 1
                key = f"{base}#{index}"
            found[variable.ref()] = key
            taken.add(key)

    visit(root, ())
    return WeightKeys(found)


def key_of(layer: keras.layers.Layer, variable: tf.Variable) -> str:
    """The key of ``variable``, a weight of ``layer`` (a layer of a model, not nested)."""
    return weight_keys(layer)[variable]
