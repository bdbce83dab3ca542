"""Run a .tflite model with the LiteRT interpreter, with or without XNNPACK.

The interpreter is ``ai_edge_litert.interpreter.Interpreter`` (the
``export`` extra), else TensorFlow's deprecated ``tf.lite.Interpreter``.
XNNPACK is the delegate LiteRT applies by default; turning it off means
``experimental_op_resolver_type=BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (the
builtin optimized kernels, without default delegates).

Integer inputs and outputs (full-integer int8 export) are (de)quantized with
the tensor's own scale and zero point: ``q = round(x / scale) + zero_point``.

Recurrent layers (``UNIDIRECTIONAL_SEQUENCE_LSTM``) keep their state in
*variable* tensors that persist between ``invoke()`` calls; a Keras model
without ``stateful=True`` starts every sequence from zero, so :func:`predict`
resets them (``reset_all_variables()``) before each example, as an app must.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    RUNTIME_NAME = "ai-edge-litert"
except ImportError:  # pragma: no cover - depends on the optional extra
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
    OpResolverType = tf.lite.experimental.OpResolverType
    RUNTIME_NAME = "tf.lite"

from tflite_export.flatbuffer import TFLiteFileError

__all__ = [
    "Loaded",
    "RUNTIME_BUILTIN",
    "RUNTIME_NAME",
    "RUNTIME_XNNPACK",
    "dequantize_output",
    "feed_dtype",
    "load",
    "predict",
    "quantize_input",
]

RUNTIME_XNNPACK = "XNNPACK"
RUNTIME_BUILTIN = "builtin kernels"


@dataclass
class Loaded:
    """An allocated interpreter and a description of what runs the model.

    Attributes:
      interpreter: the LiteRT interpreter, tensors allocated.
      runtime: ``"XNNPACK"`` or ``"builtin kernels"``.
      xnnpack_error: when XNNPACK was asked for but could not prepare the
        model, its error (the model then runs on the builtin kernels).
    """

    interpreter: Any
    runtime: str
    xnnpack_error: str | None = None

    @property
    def label(self) -> str:
        """The runtime, noting a failed XNNPACK delegate."""
        if self.xnnpack_error is None:
            return self.runtime
        return f"{self.runtime} (XNNPACK failed)"


def load(content: bytes, name: str, *, threads: int = 1, xnnpack: bool = True) -> Loaded:
    """An allocated interpreter for ``content``.

    When ``xnnpack`` is set but the XNNPACK delegate cannot prepare the model
    (LiteRT 2.3 fails on ``DENSIFY`` of int8 weights at allocation, and on
    int8 sparse ``FULLY_CONNECTED`` of an EfficientNet at the first
    ``invoke()``: one trial run on zeros finds it), the model is loaded on the
    builtin kernels and :attr:`Loaded.xnnpack_error` says why.

    Raises:
      TFLiteFileError: when LiteRT cannot load the model at all (names ``name``).
    """
    try:
        return Loaded(_allocate(content, threads, xnnpack), _runtime(xnnpack))
    except (ValueError, RuntimeError) as error:
        if not xnnpack:
            raise TFLiteFileError(f"LiteRT cannot load {name}: {error}") from error
        first = str(error)
    try:
        interpreter = _allocate(content, threads, xnnpack=False)
    except (ValueError, RuntimeError) as error:
        raise TFLiteFileError(f"LiteRT cannot load {name}: {first}") from error
    return Loaded(interpreter, RUNTIME_BUILTIN, xnnpack_error=first)


def _runtime(xnnpack: bool) -> str:
    return RUNTIME_XNNPACK if xnnpack else RUNTIME_BUILTIN


def _allocate(content: bytes, threads: int, xnnpack: bool) -> Any:
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(
        model_content=content,
        num_threads=threads,
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    if xnnpack:  # the delegate prepares some nodes only at the first invoke()
        for detail in interpreter.get_input_details():
            zeros = np.zeros(detail["shape"], np.dtype(detail["dtype"]))
            interpreter.set_tensor(detail["index"], zeros)
        interpreter.invoke()
        interpreter.reset_all_variables()
    return interpreter


def feed_dtype(detail: dict[str, Any]) -> np.dtype:
    """The dtype of the values fed to an input: float32, quantized by :func:`quantize_input`
    for an int8 input; the tensor's own dtype for integer ids (no quantization)."""
    dtype = np.dtype(detail["dtype"])
    scale, _ = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and not scale > 0:
        return dtype
    return np.dtype(np.float32)


def quantize_input(detail: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """``x`` in the input tensor's dtype: quantized for an integer input."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale > 0:
        info = np.iinfo(dtype)
        q = np.round(np.asarray(x, np.float64) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x, dtype)


def dequantize_output(detail: dict[str, Any], y: np.ndarray) -> np.ndarray:
    """An output as float32, dequantized when it is an integer tensor."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale > 0:
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return y.astype(np.float32)


def predict(interpreter: Any, x: np.ndarray) -> np.ndarray:
    """The model's only output for each example of ``x``, one example at a time.

    Args:
      interpreter: an allocated interpreter with one input and one output.
      x: float inputs ``(n, *input_shape)``.

    Returns:
      float32 outputs ``(n, *output_shape)`` (dequantized for int8 models).
    """
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    outputs = []
    for example in x:
        interpreter.reset_all_variables()  # recurrent state: every sequence starts at 0
        interpreter.set_tensor(input_detail["index"], quantize_input(input_detail, example[None]))
        interpreter.invoke()
        outputs.append(
            dequantize_output(output_detail, interpreter.get_tensor(output_detail["index"]))
        )
    return np.concatenate(outputs, axis=0)
