"""Convolutions: ``Conv1D``, ``Conv2D``, ``DepthwiseConv1D``, ``DepthwiseConv2D``.

A convolution is a Dense layer applied to every image patch with shared
weights, so example i's kernel gradient is a sum over output positions p:
``g_i = sum_p patch_ip^T delta_ip``. Unlike Dense, the square of that sum does
not factor over p, so the per-example kernel gradients are materialised. They
are formed one kernel tap at a time: tap k's per-example gradient
``[B, C_in, C_out]`` is one batched matmul of the strided slice of the input
that the tap reads with ``delta`` (no im2col copy of the whole patch matrix;
``tf.image.extract_patches`` measured 3-5x slower here). The worst case the
graph executor may hold, all taps at once, is what :meth:`per_example_floats`
counts: ``P * prod(kernel_size) * C_in`` input slices and the
``[B, *kernel.shape]`` gradients, so the collector's chunk size keeps them
within the memory budget. Strides, dilation, ``"same"``/``"valid"``/``"causal"``
padding, grouped convolutions and both data formats are handled; 1-D
convolutions are 2-D convolutions over a height of one.
"""

from __future__ import annotations

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.kronecker import input_factor, output_factor
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
    ``C_out = C_in * M``). Per example and kernel tap k, with ``x_ipk`` the input
    tap k reads at output position p,
    ``g_i[k, c, g, o] = sum_p x_ipk[g, c] * delta_ip[g, o]`` and
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
        x, delta = self._channels_last_2d(layer, inputs, delta)
        batch = tf.shape(delta)[0]
        in_channels, out_channels = x.shape[-1], delta.shape[-1]
        groups = self.groups(layer, in_channels)
        delta_rows = tf.reshape(delta, [batch, -1, groups, out_channels // groups])
        sums, sumsqs = [], []
        for tap in self._taps(layer, x, delta):
            rows = tf.reshape(tap, [batch, -1, groups, in_channels // groups])
            if groups == 1:  # [B, C_in, C_out]: a batched matmul
                per_example = tf.matmul(rows[:, :, 0], delta_rows[:, :, 0], transpose_a=True)
            else:  # [B, C_in / G, G, C_out / G]
                per_example = tf.einsum("bpgc,bpgo->bcgo", rows, delta_rows)
            sums.append(tf.reduce_sum(per_example, 0))
            sumsqs.append(tf.reduce_sum(tf.square(per_example), 0))
        kernel_shape = getattr(layer, self.kernel_role).shape
        out = {
            self.kernel_role: BatchMoments(
                tf.reshape(tf.stack(sums), kernel_shape),
                tf.reshape(tf.stack(sumsqs), kernel_shape),
            )
        }
        if layer.use_bias:
            out["bias"] = moments_of(tf.reduce_sum(delta, [1, 2]))
        return out

    def role_moments(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        delta: tf.Tensor,
        roles: frozenset[str],
    ) -> dict[str, BatchMoments]:
        if self.kernel_role in roles or not layer.use_bias or "bias" not in roles:
            return super().role_moments(layer, inputs, delta, roles)
        _, delta = self._channels_last_2d(layer, inputs, delta)
        return {"bias": moments_of(tf.reduce_sum(delta, [1, 2]))}

    @staticmethod
    def _channels_last_2d(
        layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Inputs ``[B, H, W, C_in]`` and delta ``[B, H_out, W_out, C_out]`` (1-D: H = 1)."""
        x = tf.cast(inputs, delta.dtype)
        if layer.data_format == _CHANNELS_FIRST:
            perm = [0, *range(2, layer.rank + 2), 1]
            x, delta = tf.transpose(x, perm), tf.transpose(delta, perm)
        if layer.rank == 1:
            x, delta = x[:, tf.newaxis], delta[:, tf.newaxis]
        return x, delta

    @staticmethod
    def _taps(layer: keras.layers.Layer, x: tf.Tensor, delta: tf.Tensor) -> list[tf.Tensor]:
        """For each kernel tap, in kernel order, the inputs it reads: ``[B, H_out, W_out, C_in]``.

        Tap ``(i, j)`` of the kernel multiplies, at output position ``(p, q)``, the
        (padded) input at ``(p * stride + i * dilation, q * stride + j * dilation)``:
        a strided slice of the padded input, aligned with ``delta``. Padding as
        in TensorFlow: ``"same"`` splits the missing rows with the smaller half
        first, ``"causal"`` pads on the left only.
        """
        sizes, strides, rates = layer.kernel_size, layer.strides, layer.dilation_rate
        if layer.rank == 1:
            sizes, strides, rates = (1, *sizes), (1, *strides), (1, *rates)
        pads, extents = [[0, 0]], []
        for axis in (1, 2):
            size_in, size_out = _dim(x, axis), _dim(delta, axis)
            k, stride, rate = sizes[axis - 1], strides[axis - 1], rates[axis - 1]
            read = (size_out - 1) * stride + 1  # input rows one tap reads
            needed = read + (k - 1) * rate
            if layer.padding == "causal":
                before = (k - 1) * rate
            elif layer.padding == "same":
                before = _at_least_zero(needed - size_in) // 2
            else:
                before = 0
            pads.append([before, _at_least_zero(needed - size_in - before)])
            extents.append(read)
        x = tf.pad(x, [*pads, [0, 0]])
        return [
            x[
                :,
                i * rates[0] : i * rates[0] + extents[0] : strides[0],
                j * rates[1] : j * rates[1] + extents[1] : strides[1],
            ]
            for i in range(sizes[0])
            for j in range(sizes[1])
        ]


def _dim(t: tf.Tensor, axis: int) -> int | tf.Tensor:
    """A static size when known, else the dynamic one."""
    return t.shape[axis] if t.shape[axis] is not None else tf.shape(t)[axis]


def _at_least_zero(value: int | tf.Tensor) -> int | tf.Tensor:
    return max(value, 0) if isinstance(value, int) else tf.maximum(value, 0)


class ConvRule(ConvolutionRule):
    """``Conv1D`` and ``Conv2D`` (any ``groups``): kernel ``[*kernel_size, C_in / G, C_out]``.

    Kronecker factors (``groups == 1``) as in KFC (Grosse & Martens 2016): the
    kernel is the ``[K * C_in, C_out]`` matrix of a Dense layer applied to
    every patch (K kernel taps), and with spatially uncorrelated derivatives
    ``E[g g^T] ~ (1 / P) sum_p E[a~_p a~_p^T] (x) sum_p E[delta_p delta_p^T]``
    over the P output positions: the input factor is the patch second moment
    summed over positions and divided by P, the output factor the ``delta``
    second moment summed over positions.
    """

    def groups(self, layer: keras.layers.Layer, in_channels: int) -> int:
        return layer.groups

    def kronecker_shapes(self, layer: keras.layers.Layer) -> tuple[int, int] | None:
        if layer.groups != 1:
            return None
        *taps, in_channels, out_channels = layer.kernel.shape
        return size_of(taps) * int(in_channels) + int(layer.use_bias), int(out_channels)

    def kronecker_inputs(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        outputs: tf.Tensor,
        weights: tf.Tensor | None = None,
    ) -> tf.Tensor:
        x, z = self._channels_last_2d(layer, inputs, outputs)
        patches = tf.stack(self._taps(layer, x, z), axis=-2)  # [B, H_out, W_out, K, C_in]
        rows = tf.reshape(patches, [tf.shape(x)[0], -1, patches.shape[-2] * patches.shape[-1]])
        positions = tf.cast(_dim(z, 1) * _dim(z, 2), rows.dtype)
        return input_factor(rows, layer.use_bias, weights) / positions

    def kronecker_outputs(self, layer: keras.layers.Layer, delta: tf.Tensor) -> tf.Tensor:
        if layer.data_format == _CHANNELS_FIRST:
            delta = tf.transpose(delta, [0, *range(2, layer.rank + 2), 1])
        return output_factor(delta)


class DepthwiseConvRule(ConvolutionRule):
    """``DepthwiseConv1D``/``DepthwiseConv2D``: ``depthwise_kernel`` ``[*kernel_size, C_in, M]``.

    tfmot does not prune depthwise kernels; their statistics are still exact.
    """

    kernel_role = "depthwise_kernel"

    def groups(self, layer: keras.layers.Layer, in_channels: int) -> int:
        return in_channels
