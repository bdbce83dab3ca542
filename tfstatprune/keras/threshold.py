"""Prune by a threshold on magnitude: what a penalty drove (nearly) to zero goes.

After training with :class:`tfstatprune.regularizers.L1`,
:class:`~tfstatprune.regularizers.GroupLasso` or
:class:`tfstatprune.SensitivityRegularization`, many weights (or whole groups)
are close to zero; :func:`prune_by_threshold` sets to zero those whose
magnitude is below a threshold. (To a target sparsity instead:
``tfstatprune.prune_once(model, None, s, "magnitude", granularity=...)``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfstatprune._keras import keras
from tfstatprune._translate import returns_users_keras
from tfstatprune.granularity import Granularity, check_granularity, expand, reduce_groups
from tfstatprune.keras.api import copy_model
from tfstatprune.keras.layers import select_layers
from tfstatprune.keras.scoring import mask_units

__all__ = ["prune_by_threshold"]

_UNITS = ("unit", "filter")


@returns_users_keras()
def prune_by_threshold(
    model: keras.Model,
    threshold: float,
    granularity: Granularity = "weight",
    *,
    layers: Sequence[str] | None = None,
    prune_bias: bool = False,
) -> keras.Model:
    """A copy of ``model`` with the weights (or groups) of magnitude below ``threshold`` zeroed.

    A weight goes when ``|w| < threshold``; a group (unit, filter, channel,
    block) when the L2 norm of its kernel entries -- what the group lasso
    penalizes -- is below ``threshold``, and then all its members go (a
    unit's bias with its column).

    Args:
      model: a tf_keras model (left untouched).
      threshold: the magnitude below which weights or groups are pruned (>= 0).
      granularity: ``"weight"``, ``"unit"``, ``"filter"``, ``"channel"``,
        ``(1, 4)`` or ``(1, 16)``.
      layers: names of the layers to prune (default: every prunable layer;
        for units and filters every one but the model's output layers, whose
        units are the outputs).
      prune_bias: with ``"weight"``, also threshold the biases.

    Returns:
      The pruned copy.

    Example:
      >>> import numpy as np
      >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(2,))])
      >>> m.set_weights([np.array([[0.5, 1e-4], [2.0, -1e-5]]), np.zeros(2)])
      >>> prune_by_threshold(m, 1e-3).layers[0].kernel.numpy().tolist()
      [[0.5, 0.0], [2.0, -0.0]]
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    granularity = check_granularity(granularity)
    pruned = copy_model(model)
    chosen = select_layers(pruned, layers)
    if layers is None and granularity in _UNITS:
        outputs = set(pruned.output_names)
        chosen = [layer for layer in chosen if layer.name not in outputs] or chosen
    for unit in mask_units(chosen, granularity, prune_bias=prune_bias):
        values = [w.numpy() for w in unit.weights]
        if unit.groupings is None:
            masks = [np.abs(values[0]) >= threshold]
        else:
            bias = getattr(unit.layer, "bias", None)
            magnitudes = [
                np.zeros(v.shape) if w is bias else np.abs(v)
                for w, v in zip(unit.weights, values, strict=True)
            ]
            keep = reduce_groups(magnitudes, unit.groupings, "l2") >= threshold
            masks = [expand(keep, grouping) for grouping in unit.groupings]
        for weight, value, mask in zip(unit.weights, values, masks, strict=True):
            weight.assign(value * mask.astype(value.dtype))
    return pruned
