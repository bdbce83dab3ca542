"""``Embedding``: ``z_t = E[id_t]``, a row lookup per token."""

from __future__ import annotations

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.rules.base import BatchMoments, GradientRule, size_of

__all__ = ["EmbeddingRule"]


class EmbeddingRule(GradientRule):
    """``Embedding``: example i's gradient scatters its deltas into the rows it looked up.

    Shapes: ``inputs`` ids ``[B, T...]``, ``delta`` ``[B, T..., D]``, the
    embeddings ``[V, D]``. ``g_i[v] = sum_{t: id_it = v} delta_it``. The sum over
    examples is one ``unsorted_segment_sum`` by id; the sum of squares needs
    each example's repeated ids added *before* squaring, so the deltas are
    first summed per distinct ``(example, id)`` pair (at most ``B * T`` rows),
    then squared and summed by id. No ``[B, V, D]`` tensor is formed.
    """

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        return {"embeddings": layer.embeddings}

    def unsupported(self, layer: keras.layers.Layer) -> str | None:
        if getattr(layer, "sparse", False):
            return "sparse=True embeddings have no closed-form rule"
        return None

    def per_example_floats(
        self,
        layer: keras.layers.Layer,
        input_shape: tf.TensorShape,
        output_shape: tf.TensorShape,
    ) -> int:
        return size_of(output_shape)  # the per-(example, id) sums, at most T * D

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        vocabulary, width = layer.input_dim, delta.shape[-1]
        ids = tf.reshape(tf.cast(inputs, tf.int64), [tf.shape(delta)[0], -1])
        example = tf.broadcast_to(
            tf.range(tf.shape(ids, tf.int64)[0])[:, tf.newaxis], tf.shape(ids)
        )
        pairs, pair_index = tf.unique(tf.reshape(example * vocabulary + ids, [-1]))
        per_pair = tf.math.unsorted_segment_sum(
            tf.reshape(delta, [-1, width]), pair_index, tf.size(pairs)
        )
        rows = pairs % vocabulary
        return {
            "embeddings": BatchMoments(
                tf.math.unsorted_segment_sum(per_pair, rows, vocabulary),
                tf.math.unsorted_segment_sum(tf.square(per_pair), rows, vocabulary),
            )
        }
