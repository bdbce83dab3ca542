"""Running the statistics under a ``tf.distribute.Strategy``.

The sufficient statistics are sums over examples, so replicas can each sum
their own examples and the totals are one ``SUM`` reduction away. Every
replica keeps float64 accumulators (sync-on-read variables, local to the
replica while the chunks run); each chunk a worker reads is split across its
local replicas; at the end ``strategy.reduce(SUM, ...)`` adds the replicas'
accumulators -- across workers too under ``MultiWorkerMirroredStrategy`` -- so
every worker ends with the same statistics and therefore the same masks. The
workers may read different numbers of chunks: nothing is communicated until
the single reduction at the end.

Without a strategy the default (single-replica) strategy runs the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["Accumulators", "strategy_for", "local_replicas", "distribute_chunk"]


def strategy_for(model: keras.Model) -> tf.distribute.Strategy:
    """The strategy in scope, else the one the model's variables were created under.

    ``tf.distribute.get_strategy()`` is the default (single-replica) strategy
    when neither applies.
    """
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    strategy = getattr(model, "distribute_strategy", None)
    return strategy if strategy is not None else tf.distribute.get_strategy()


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this worker (all replicas but for multi-worker strategies)."""
    if strategy.num_replicas_in_sync == 1:
        return 1
    return max(1, len(strategy.extended.worker_devices))


def _slice(structure: Any, start: int, stop: int) -> Any:
    # Tensors, not numpy arrays: a tf.function traces distributed numpy values by value.
    return tf.nest.map_structure(lambda t: tf.convert_to_tensor(t[start:stop]), structure)


def distribute_chunk(
    strategy: tf.distribute.Strategy, x: Any, y: Any, size: int
) -> tuple[Any, Any, Any]:
    """``(x, y, weights)`` split into contiguous parts, one per local replica.

    Single replica: ``(x, y, None)``. A replica whose part would be empty (a
    chunk smaller than the number of replicas) gets one example with weight
    zero instead, which adds exactly nothing to the sums and the count.
    """
    if strategy.num_replicas_in_sync == 1:
        return x, y, None
    replicas = local_replicas(strategy)
    bounds = np.linspace(0, size, replicas + 1).round().astype(int)

    def part(context: tf.distribute.experimental.ValueContext) -> tuple[Any, Any, tf.Tensor]:
        local = context.replica_id_in_sync_group % replicas
        start, stop = int(bounds[local]), int(bounds[local + 1])
        if stop > start:
            return _slice(x, start, stop), _slice(y, start, stop), tf.ones([stop - start])
        return _slice(x, 0, 1), _slice(y, 0, 1), tf.zeros([1])

    return strategy.experimental_distribute_values_from_function(part)


class Accumulators:
    """Float64 accumulators, one local copy per replica (sync-on-read variables, SUM).

    ``reset()`` zeroes every replica's copy; inside ``strategy.run`` the
    replica adds to its own copy; ``totals()`` is ``strategy.reduce(SUM, ...)``
    over the replicas (and workers), as numpy arrays.
    """

    def __init__(self, strategy: tf.distribute.Strategy, shapes: Sequence[Sequence[int]]) -> None:
        self.strategy = strategy
        with strategy.scope():
            self.variables = [
                tf.Variable(
                    tf.zeros(shape, tf.float64),
                    trainable=False,
                    name=f"statistics_accumulator_{i}",
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                )
                for i, shape in enumerate(shapes)
            ]

        def zero() -> list:
            return [v.assign(tf.zeros_like(v)) for v in self.variables]

        def totals() -> list[tf.Tensor]:
            local = strategy.run(lambda: [tf.identity(v) for v in self.variables])
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in local]

        if strategy.num_replicas_in_sync > 1:  # eager runs over replicas are slow
            self._reset = tf.function(lambda: strategy.run(zero))
            self._totals = tf.function(totals)
        else:  # one replica: plain variables, no cross-replica machinery
            self._reset, self._totals = zero, lambda: self.variables

    def add(self, values: Sequence[tf.Tensor]) -> None:
        """Add ``values`` (float32 or float64, in variable order) in replica context."""
        for v, value in zip(self.variables, values, strict=True):
            v.assign_add(tf.cast(value, tf.float64))

    def reset(self) -> None:
        self._reset()

    def totals(self) -> list[np.ndarray]:
        return [t.numpy() for t in self._totals()]
