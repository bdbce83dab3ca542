"""The one walk over a model's layer graph, and the one leaf-layer iteration.

A Sequential or functional model is a graph of layer *calls* (Keras nodes):
:func:`layer_calls` lists them inputs first, each with its input and output
tensors; :func:`tensor_key` names a symbolic tensor so that channel
information can be attached to it. Pruning wrappers (tfstatprune's and
tfmot's) are looked through: a wrapped layer is known by its inner layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras

__all__ = [
    "LayerCall",
    "TensorKey",
    "layer_calls",
    "leaf_layers",
    "model_nodes",
    "readers_of",
    "require_graph",
    "tensor_key",
    "unwrap",
]

TensorKey = tuple[str, int, int]


def require_graph(model: keras.Model, what: str) -> None:
    """Raise a clear error unless ``model`` is a built Sequential or functional model.

    Raises:
      ValueError: a Sequential model without a known input shape.
      TypeError: a subclassed model (its layer graph is not known).
    """
    if getattr(model, "_is_graph_network", False):
        return
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"{what} needs a built Sequential model with a known input shape; model "
            f"{model.name!r} has none. Start it with keras.Input(shape=...) (or give its "
            "first layer input_shape=...)."
        )
    raise TypeError(
        f"{what} works on Sequential and functional models, but {model.name!r} is a "
        f"subclassed model ({type(model).__name__}) whose layer graph is not known. "
        "Rebuild it as a functional model (keras.Model(inputs, outputs)) and copy the "
        "weights over."
    )


def model_nodes(model: keras.Model) -> list[Any]:
    """The model's layer calls (Keras nodes), inputs first (topological order)."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def tensor_key(tensor: Any) -> TensorKey:
    """A hashable name of a symbolic tensor: (layer, node index, tensor index)."""
    history = tensor._keras_history
    return (history.layer.name, history.node_index, history.tensor_index)


def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer inside a pruning wrapper (tfstatprune's or tfmot's), else ``layer``."""
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        return layer.layer
    return layer


class LayerCall(NamedTuple):
    """One call of a layer inside the model.

    Attributes:
      layer: the layer called (as it sits in the model: a wrapper, if wrapped).
      inputs: its symbolic input tensors, flattened.
      outputs: its symbolic output tensors, flattened.
      node: the Keras node (its ``call_args`` hold the non-tensor arguments).
    """

    layer: keras.layers.Layer
    inputs: list[Any]
    outputs: list[Any]
    node: Any = None

    @property
    def inner(self) -> keras.layers.Layer:
        """The layer, looking through a pruning wrapper."""
        return unwrap(self.layer)

    def in_shape(self, index: int = 0) -> tuple[int | None, ...]:
        return tuple(self.inputs[index].shape)

    def out_shape(self, index: int = 0) -> tuple[int | None, ...]:
        return tuple(self.outputs[index].shape)


def layer_calls(model: keras.Model) -> list[LayerCall]:
    """Every layer call of ``model`` in topological order."""
    return [
        LayerCall(
            node.layer,
            list(tf.nest.flatten(node.keras_inputs)),
            tf.nest.flatten(node.outputs),
            node,
        )
        for node in model_nodes(model)
    ]


def readers_of(calls: list[LayerCall]) -> dict[TensorKey, list[LayerCall]]:
    """``{tensor: the calls that read it}``."""
    readers: dict[TensorKey, list[LayerCall]] = {}
    for call in calls:
        for tensor in call.inputs:
            readers.setdefault(tensor_key(tensor), []).append(call)
    return readers


def leaf_layers(model: keras.layers.Layer, *, through_wrappers: bool = True) -> Iterator[Any]:
    """The innermost layers of ``model``: nested models are descended into.

    With ``through_wrappers`` (the default) a Keras ``Wrapper`` (a pruning
    wrapper, ``TimeDistributed``, ...) yields the layer it wraps; without, the
    wrapper itself.

    >>> from tfstatprune._keras import keras
    >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a")])
    >>> outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="b")])
    >>> [layer.name for layer in leaf_layers(outer)]
    ['a', 'b']
    """
    if isinstance(model, keras.Model):
        for layer in model.layers:
            yield from leaf_layers(layer, through_wrappers=through_wrappers)
    elif through_wrappers and isinstance(model, keras.layers.Wrapper):
        yield from leaf_layers(model.layer, through_wrappers=through_wrappers)
    else:
        yield model
