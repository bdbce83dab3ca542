"""The probe: each probed layer's inputs and pre-activation output in one forward pass.

While the probe is active (inside the traced statistics step), a probed
layer's ``call`` runs with its activation replaced by the identity, records
``(inputs, z)`` -- ``inputs`` the first positional argument of ``call``, ``z``
the output before the activation -- and applies the activation itself. The
output gradients ``delta = d loss / d z`` then come from the step's tape
(:meth:`Probe.output_gradients`). Layers that define ``statistics_call``
(``STATISTICS_CALL_HOOK``; pruning wrappers skip their mask-update ops with it)
run that instead of ``call`` while the statistics are collected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["STATISTICS_CALL_HOOK", "Probe", "hooked_layers"]

# Hook a layer may define to replace its ``call`` while statistics are collected
# (pruning wrappers use it to skip their mask-update ops).
STATISTICS_CALL_HOOK = "statistics_call"
_ZERO = tf.UnconnectedGradients.ZERO


def hooked_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers that define a statistics hook (see ``STATISTICS_CALL_HOOK``)."""
    return [layer for layer in model.submodules if hasattr(layer, STATISTICS_CALL_HOOK)]


class Probe:
    """Records ``(inputs, z)`` of ``layers`` during one traced forward pass.

    Per thread: a ``MirroredStrategy`` traces each replica in its own thread.
    """

    def __init__(self, layers: Sequence[keras.layers.Layer]) -> None:
        self.layers = list(layers)
        self._local = threading.local()

    @property
    def active(self) -> bool:
        return getattr(self._local, "active", False)

    @active.setter
    def active(self, value: bool) -> None:
        self._local.active = value

    @property
    def calls(self) -> dict[int, tuple[Any, tf.Tensor]]:
        """``{id(layer): (inputs, z)}`` of the pass being recorded."""
        if not hasattr(self._local, "calls"):
            self._local.calls = {}
        return self._local.calls

    def record(self, forward: Callable[[Any], Any], x: Any) -> tuple[Any, list, list]:
        """``forward(x)`` with the probe active: ``(outputs, inputs per layer, z per layer)``."""
        calls = self.calls
        calls.clear()
        self.active = True
        try:
            outputs = forward(x)
        finally:
            self.active = False
        missing = [layer.name for layer in self.layers if id(layer) not in calls]
        if missing:
            raise ValueError(f"layers {missing} were not called by the model's forward pass")
        recorded = [calls[id(layer)] for layer in self.layers]
        calls.clear()
        return outputs, [a for a, _ in recorded], [z for _, z in recorded]

    def shapes(self, forward: Callable[[Any], Any], x_spec: Any) -> list[tuple]:
        """Per layer, the per-example ``(input shape, z shape)`` in a trace of ``forward``."""
        traced: list = []

        def record(x: Any) -> Any:
            outputs, inputs, zs = self.record(forward, x)
            traced.extend(
                (tf.nest.flatten(a)[0].shape[1:], z.shape[1:])
                for a, z in zip(inputs, zs, strict=True)
            )
            return outputs

        tf.function(record).get_concrete_function(x_spec)
        return traced

    @staticmethod
    def output_gradients(
        tape: tf.GradientTape, objective: tf.Tensor, zs: list, seed: tf.Tensor | None = None
    ) -> list:
        """``d objective / d z`` for each recorded ``z`` (zeros where unconnected).

        ``seed``: the objective's output gradient (a one-hot vector picks one
        of stacked objectives).
        """
        return tape.gradient(objective, zs, output_gradients=seed, unconnected_gradients=_ZERO)

    def _probed_call(self, layer: keras.layers.Layer) -> Callable[..., Any]:
        original = layer.call

        def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(inputs, *args, **kwargs)
            activation = getattr(layer, "activation", None)
            if activation is not None:
                layer.activation = keras.activations.linear
            try:
                z = original(inputs, *args, **kwargs)
            finally:
                if activation is not None:
                    layer.activation = activation
            if id(layer) in self.calls:
                raise ValueError(
                    f"layer {layer.name!r} is called more than once per forward pass; the "
                    "closed-form statistics need one call per layer: pass closed_form=False"
                )
            self.calls[id(layer)] = (inputs, z)
            return activation(z) if activation is not None else z

        return call

    @contextlib.contextmanager
    def patched(self, hooked: Sequence[keras.layers.Layer]) -> Iterator[None]:
        """Patch ``call`` of the probed layers and of the ``hooked`` layers, restored on exit."""
        patched: list[tuple[keras.layers.Layer, Any, bool]] = []

        def patch(layer: keras.layers.Layer, fn: Any) -> None:
            had_instance_call = "call" in layer.__dict__
            patched.append((layer, layer.__dict__.get("call"), had_instance_call))
            layer.call = fn

        try:
            for layer in hooked:
                patch(layer, getattr(layer, STATISTICS_CALL_HOOK))
            for layer in self.layers:
                patch(layer, self._probed_call(layer))
            yield
        finally:
            for layer, previous, had in reversed(patched):
                if had:
                    layer.call = previous
                else:
                    del layer.call
