"""Convolutions: ``Conv1D``, ``Conv2D``, ``DepthwiseConv1D``, ``DepthwiseConv2D``.

A convolution is a Dense layer applied to every image patch with shared
weights, so example i's kernel gradient is a sum over output positions p:
``g_i = sum_p patch_ip^T delta_ip``. Unlike Dense, the square of that sum does
not factor over p, so the per-example kernel gradients are materialised,
``[B, *kernel.shape]`` floats per chunk (counted by :meth:`per_example_floats`,
so the collector's chunk size keeps them within the memory budget), from the
patches ``[B, P, prod(kernel_size) * C_in]`` of ``tf.image.extract_patches``.
Strides, dilation, ``"same"``/``"valid"``/``"causal"`` padding, grouped
convolutions and both data formats are handled; 1-D convolutions are 2-D
convolutions over a height of one.
"""

from __future__ import annotations

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.rules.base import BatchMoments, GradientRule, moments_of, size_of

__all__ = ["ConvolutionRule", "ConvRule", "DepthwiseConvRule"]

_CHANNELS_FIRST = "channels_first"
_SUPPORTED_RANKS = (1, 2)


class ConvolutionRule(GradientRule):
    """Shared maths of the convolution rules; subclasses name the kernel and the groups.

    Shapes (channels_last; channels_first is transposed first): ``inputs``
    ``[B, *spatial_in, C_in]``, ``delta`` ``[B, *spatial_out, C_out]``, the
    kernel ``[*kernel_size, C_in / G, C_out]`` for G groups (a depthwise
    kernel ``[*kernel_size, C_in, M]`` is the case ``G = C_in``,
    ``C_out = C_in * M``). Per example
    ``g_i[k, c, g, o] = sum_p patch_ip[k, g, c] * delta_ip[g, o]`` and
    ``g_i(b) = sum_p delta_ip``.
    """

    kernel_role = "kernel"

    def groups(self, layer: keras.layers.Layer, in_channels: int) -> int:
        """How many groups the input channels fall into."""
        raise NotImplementedError

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        found = {self.kernel_role: getattr(layer, self.kernel_role)}
        if layer.use_bias:
            found["bias"] = layer.bias
        return found

    def unsupported(self, layer: keras.layers.Layer) -> str | None:
        if layer.rank not in _SUPPORTED_RANKS:
            return f"{layer.rank}-D convolutions have no closed-form rule"
        return None

    def per_example_floats(
        self,
        layer: keras.layers.Layer,
        input_shape: tf.TensorShape,
        output_shape: tf.TensorShape,
    ) -> int:
        kernel = getattr(layer, self.kernel_role).shape
        channels_axis = 0 if layer.data_format == _CHANNELS_FIRST else -1
        in_channels = tf.TensorShape(input_shape)[channels_axis]
        out = tf.TensorShape(output_shape).as_list()
        positions = size_of(out[1:] if channels_axis == 0 else out[:-1])
        patch = size_of(kernel[: layer.rank]) * (in_channels or 1)
        bias = (out[channels_axis] or 1) if layer.use_bias else 0
        return positions * patch + size_of(kernel) + bias

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        patches, delta = self.patches(layer, inputs, delta)
        kernel = getattr(layer, self.kernel_role)
        per_example = self.kernel_gradients(layer, patches, delta, kernel.shape)
        out = {self.kernel_role: moments_of(per_example)}
        if layer.use_bias:
            out["bias"] = moments_of(tf.reduce_sum(delta, 1))
        return out

    def patches(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(patches [B, P, prod(kernel_size) * C_in], delta [B, P, C_out])``, channels last."""
        x = tf.cast(inputs, delta.dtype)
        if layer.data_format == _CHANNELS_FIRST:
            perm = [0, *range(2, layer.rank + 2), 1]
            x, delta = tf.transpose(x, perm), tf.transpose(delta, perm)
        sizes, strides, rates = layer.kernel_size, layer.strides, layer.dilation_rate
        if layer.rank == 1:
            x, delta = x[:, tf.newaxis], delta[:, tf.newaxis]
            sizes, strides, rates = (1, *sizes), (1, *strides), (1, *rates)
        padding = layer.padding
        if padding == "causal":
            left = rates[-1] * (sizes[-1] - 1)
            x = tf.pad(x, [[0, 0], [0, 0], [left, 0], [0, 0]])
            padding = "valid"
        patches = tf.image.extract_patches(
            x,
            sizes=[1, *sizes, 1],
            strides=[1, *strides, 1],
            rates=[1, *rates, 1],
            padding=padding.upper(),
        )
        batch = tf.shape(delta)[0]
        return (
            tf.reshape(patches, [batch, -1, patches.shape[-1]]),
            tf.reshape(delta, [batch, -1, delta.shape[-1]]),
        )

    def kernel_gradients(
        self,
        layer: keras.layers.Layer,
        patches: tf.Tensor,
        delta: tf.Tensor,
        kernel_shape: tf.TensorShape,
    ) -> tf.Tensor:
        """Per-example kernel gradients ``[B, *kernel_shape]`` from patches and delta."""
        batch = tf.shape(delta)[0]
        taps = size_of(kernel_shape[: layer.rank])
        in_channels = patches.shape[-1] // taps
        groups = self.groups(layer, in_channels)
        if groups == 1:
            per_example = tf.matmul(patches, delta, transpose_a=True)
        else:
            positions = tf.shape(patches)[1]
            grouped_patches = tf.reshape(
                patches, [batch, positions, taps, groups, in_channels // groups]
            )
            grouped_delta = tf.reshape(delta, [batch, positions, groups, delta.shape[-1] // groups])
            per_example = tf.einsum("bpkgc,bpgo->bkcgo", grouped_patches, grouped_delta)
        return tf.reshape(per_example, [batch, *kernel_shape])


class ConvRule(ConvolutionRule):
    """``Conv1D`` and ``Conv2D`` (any ``groups``): kernel ``[*kernel_size, C_in / G, C_out]``."""

    def groups(self, layer: keras.layers.Layer, in_channels: int) -> int:
        return layer.groups


class DepthwiseConvRule(ConvolutionRule):
    """``DepthwiseConv1D``/``DepthwiseConv2D``: ``depthwise_kernel`` ``[*kernel_size, C_in, M]``.

    tfmot does not prune depthwise kernels; their statistics are still exact.
    """

    kernel_role = "depthwise_kernel"

    def groups(self, layer: keras.layers.Layer, in_channels: int) -> int:
        return in_channels
