"""What a model costs: parameters, multiply-adds (FLOPs) and non-zero FLOPs.

The multiply-adds (MACs) of a layer for one example are its kernel entries
times the positions the kernel is applied at, as the layer's channel rule
says (:attr:`tfstatprune.structure.rules.ChannelRule.cost`); biases,
activations, pooling and normalization are not counted:

* Dense: ``in_features * units * P`` with ``P`` the number of positions it is
  applied at (1 for a flat input);
* Conv: ``prod(output spatial dims) * prod(kernel_size) * (in_channels / groups)
  * filters``; depthwise and separable convolutions likewise per kernel,
  transposed convolutions per input position.

Non-zero FLOPs count only the non-zero kernel entries: what a sparse kernel
costs when zeros are skipped.
"""

from __future__ import annotations

import numpy as np

from tfstatprune._keras import keras
from tfstatprune._translate import require_tf_keras_model
from tfstatprune.structure.rules import rule_for
from tfstatprune.structure.walk import layer_calls, leaf_layers, require_graph

__all__ = ["count_flops", "kernel_parameters", "nonzero_flops"]


def _flops(model: keras.Model, count) -> int:
    require_graph(model, "count_flops")
    total = 0
    for call in layer_calls(model):
        layer = call.inner
        if isinstance(layer, keras.Model):
            total += _flops(layer, count)
            continue
        cost = rule_for(layer).cost
        if cost is None:
            continue
        positions = cost.positions(layer, call.in_shape(), call.out_shape())
        total += positions * sum(count(getattr(layer, name)) for name in cost.kernels)
    return total


def count_flops(model: keras.Model) -> int:
    """Multiply-adds of the Dense and convolution layers of ``model`` for one example.

    ``Dense``: ``in_features * units`` per position it is applied at;
    convolutions: ``prod(kernel.shape)`` per output position (per input
    position for transposed ones; depthwise plus pointwise kernel for separable
    ones). Biases, activations, pooling and normalization are not counted.
    Nested models are counted through; a layer called twice counts twice.

    Example (a 3x3 convolution with 1 input and 4 output channels on a 6x6
    image gives 4x4 positions of 3*3*1*4 MACs, then Dense 64 -> 5)::

        >>> from tfstatprune._keras import keras
        >>> model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3),
        ...                           keras.layers.Flatten(), keras.layers.Dense(5)])
        >>> count_flops(model)
        896

    Raises:
      TypeError: for a subclassed model (its graph is not known).
      ValueError: for a layer with unknown (None) spatial dimensions.
    """
    return _flops(require_tf_keras_model(model), lambda kernel: int(np.prod(kernel.shape)))


def nonzero_flops(model: keras.Model) -> int:
    """Multiply-adds of the non-zero kernel entries (see :func:`count_flops`).

    Each non-zero kernel entry costs one multiply-add per position its layer
    is applied at; for a model without zeros this is :func:`count_flops`.
    Pruning wrappers are looked through (their kernels as they stand).

    >>> from tfstatprune._keras import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.layers[0].kernel.assign(np.eye(4, 3, dtype="float32"))  # doctest: +ELLIPSIS
    <...>
    >>> count_flops(model), nonzero_flops(model)
    (12, 3)
    """
    return _flops(
        require_tf_keras_model(model), lambda kernel: int(np.count_nonzero(kernel.numpy()))
    )


def kernel_parameters(
    model: keras.Model, *, include_biases: bool = True, nonzero: bool = False
) -> int:
    """Scalar kernel (and bias) entries of ``model``'s leaf layers, through wrappers
    and nested models; ``nonzero`` counts only the non-zero ones.

    >>> from tfstatprune._keras import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> kernel_parameters(model), kernel_parameters(model, include_biases=False)
    (15, 12)
    >>> kernel_parameters(model, nonzero=True)  # the bias starts at 0
    12
    """
    attributes = ("kernel", "bias") if include_biases else ("kernel",)
    total = 0
    for layer in leaf_layers(model):
        for attribute in attributes:
            variable = getattr(layer, attribute, None)
            if variable is not None:
                total += (
                    int(np.count_nonzero(variable.numpy()))
                    if nonzero
                    else int(np.prod(variable.shape))
                )
    return total
