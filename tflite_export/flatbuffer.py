"""Read a .tflite flatbuffer and say how each weight tensor is stored and run.

TFLite stores a constant tensor sparse when it carries a ``sparsity`` field
(``SparsityParameters`` in the TFLite schema: a traversal order, an optional
block map, and per-dimension dense/CSR metadata). What happens at run time
depends on which operator reads the sparse tensor:

- a ``DENSIFY`` operator: the interpreter expands it to a dense buffer once,
  at load; the file is smaller, inference is exactly as fast as dense;
- ``FULLY_CONNECTED``: the kernel runs sparse natively (float32 with 1x4
  blocks or random CSR, int8 with 1x16 blocks), the only sparse kernel
  LiteRT has;
- any other operator (seen: ``DEQUANTIZE`` of float16 1x4-block weights)
  reads the compressed values as if they were dense, which gives wrong
  outputs; :func:`tflite_export.export` refuses to write such a file.

For a ``FULLY_CONNECTED`` weight of shape ``[out, in]``, a "1x4" block is one
output row times four consecutive *input* columns, i.e. four consecutive
rows ``k[4j:4j+4, o]`` of the Keras ``Dense`` kernel ``k`` of shape
``[in, out]`` (the converter transposes it).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # the same generated code ships with ai-edge-litert and with TensorFlow
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - depends on the optional extra
    from tensorflow.lite.python import schema_py_generated as schema

__all__ = [
    "FILE_IDENTIFIER",
    "Storage",
    "TFLiteFileError",
    "WeightTensor",
    "inspect_weights",
    "operator_names",
    "read_tflite",
]

#: The flatbuffer file identifier of TFLite models, at bytes 4..8 of a file.
FILE_IDENTIFIER = b"TFL3"
_IDENTIFIER_SLICE = slice(4, 8)

#: Operators with a kernel that reads sparse weights directly.
SPARSE_KERNEL_OPS = frozenset({"FULLY_CONNECTED"})
#: Operators that only change a constant's representation (followed when
#: showing which operator finally consumes a weight).
_PASS_THROUGH_OPS = frozenset({"DENSIFY", "DEQUANTIZE"})
#: Weights are the constant tensors of at least this rank (kernels, filters,
#: embedding tables; not biases or shape arguments).
_MIN_WEIGHT_RANK = 2

_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.FLOAT64: np.float64,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
}
_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(schema.TensorType).items()
    if not name.startswith("_") and isinstance(value, int)
}
_OPERATOR_NAMES = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}


class TFLiteFileError(ValueError):
    """A file that is missing, not a TFLite model, or a model LiteRT cannot load."""


class Storage(str, enum.Enum):  # noqa: UP042 - StrEnum needs Python 3.11; setup.cfg allows 3.10
    """How a weight tensor is stored in the file and what the runtime does with it."""

    DENSE = "dense"
    DENSIFIED = "sparse, densified at load"
    NATIVE = "sparse, native sparse kernel"
    UNSUPPORTED = "sparse, read by an op without a sparse kernel"


@dataclass(frozen=True)
class WeightTensor:
    """One constant weight tensor of a TFLite model.

    Attributes:
      name: the tensor name (the converter's first name for it).
      shape: the dense shape, e.g. ``(out, in)`` for ``FULLY_CONNECTED``.
      dtype: the stored element type (``"float32"``, ``"int8"``, ``"float16"``).
      sparsity: fraction of zeros in the dense tensor (None for an element type
        this module does not decode).
      storage: see :class:`Storage`.
      block: the block shape of sparse storage, e.g. ``(1, 4)``; ``(1, 1)`` for
        random (CSR) sparsity; None when stored dense.
      stored_values: number of values stored in the file (for block storage this
        counts the zeros inside kept blocks).
      consumers: the operator chains reading the tensor, e.g.
        ``("DENSIFY>FULLY_CONNECTED",)``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    sparsity: float | None
    storage: Storage
    block: tuple[int, ...] | None
    stored_values: int
    consumers: tuple[str, ...]

    @property
    def size(self) -> int:
        """Number of elements of the dense tensor."""
        return int(np.prod(self.shape))

    def describe_storage(self) -> str:
        """The storage, with the block shape and the consuming operators."""
        if self.storage is Storage.DENSE:
            return Storage.DENSE.value
        block = (
            "random"
            if self.block is None or max(self.block) == 1
            else "x".join(str(b) for b in self.block) + " blocks"
        )
        return f"{self.storage.value} ({block}; {', '.join(self.consumers) or 'unused'})"


def read_tflite(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a .tflite file, after checking its flatbuffer identifier.

    Raises:
      FileNotFoundError: when ``path`` does not exist (the message names it).
      TFLiteFileError: when bytes 4..8 of the file are not ``b"TFL3"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model file not found: {path}")
    content = path.read_bytes()
    check_identifier(content, str(path))
    return content


def check_identifier(content: bytes, name: str) -> None:
    """Raise :class:`TFLiteFileError` unless ``content`` carries the TFLite identifier."""
    found = bytes(content[_IDENTIFIER_SLICE])
    if found != FILE_IDENTIFIER:
        raise TFLiteFileError(
            f"{name} is not a TFLite model: bytes 4..8 are {found!r}, expected the "
            f"flatbuffer identifier {FILE_IDENTIFIER!r} ({len(content)} bytes read)."
        )


def operator_names(content: bytes) -> list[str]:
    """The builtin (or custom) operator name of every operator, in graph order."""
    model = _unpack(content, "model")
    codes = [_code_name(code) for code in model.operatorCodes or []]
    return [codes[op.opcodeIndex] for g in model.subgraphs or [] for op in g.operators or []]


def inspect_weights(model: bytes | str | os.PathLike[str]) -> tuple[WeightTensor, ...]:
    """Every weight tensor of a TFLite model, with its sparsity and storage.

    Args:
      model: the model's bytes, or the path of a .tflite file.

    Returns:
      One :class:`WeightTensor` per constant tensor of rank >= 2, in the order
      of the first operator that reads it.

    Raises:
      FileNotFoundError, TFLiteFileError: see :func:`read_tflite`.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        name, content = "model", bytes(model)
        check_identifier(content, name)
    else:
        name, content = str(model), read_tflite(model)
    flat = _unpack(content, name)
    codes = [_code_name(code) for code in flat.operatorCodes or []]
    weights: list[WeightTensor] = []
    for graph in flat.subgraphs or []:
        operators = [(codes[op.opcodeIndex], op) for op in graph.operators or []]
        readers = _readers(operators)
        seen: set[int] = set()
        for _, op in operators:
            for index in _indices(op.inputs):
                if index in seen or index < 0:
                    continue
                seen.add(index)
                tensor = graph.tensors[index]
                data = _buffer(flat, tensor, content)
                if data is None or len(_shape(tensor)) < _MIN_WEIGHT_RANK:
                    continue
                weights.append(_describe(tensor, data, index, readers, operators))
    return tuple(weights)


def _unpack(content: bytes, name: str) -> Any:
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    except Exception as error:  # noqa: BLE001 - any decoding failure means a corrupt file
        raise TFLiteFileError(f"{name} is not a readable TFLite flatbuffer: {error!r}") from error


def _code_name(code: Any) -> str:
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    if value == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _OPERATOR_NAMES.get(value, f"BUILTIN_{value}")


def _indices(values: Sequence[int] | np.ndarray | None) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (tensor.shape if tensor.shape is not None else []))


def _readers(operators: list[tuple[str, Any]]) -> dict[int, list[int]]:
    """Tensor index -> indices (into ``operators``) of the operators reading it."""
    readers: dict[int, list[int]] = {}
    for position, (_, op) in enumerate(operators):
        for index in _indices(op.inputs):
            readers.setdefault(index, []).append(position)
    return readers


def _chains(index: int, readers: dict[int, list[int]], operators: list) -> list[str]:
    """Operator chains from a tensor through DENSIFY/DEQUANTIZE to its real consumers."""
    chains = []
    for position in readers.get(index, []):
        name, op = operators[position]
        outputs = _indices(op.outputs)
        if name in _PASS_THROUGH_OPS and len(outputs) == 1:
            tails = _chains(outputs[0], readers, operators)
            chains += [f"{name}>{tail}" for tail in tails] or [name]
        else:
            chains.append(name)
    return chains


def _buffer(model: Any, tensor: Any, content: bytes) -> np.ndarray | None:
    """The raw bytes of a constant tensor, or None for a non-constant tensor."""
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers or []):
        return None
    buffer = model.buffers[tensor.buffer]
    if buffer.data is not None and len(buffer.data):
        return np.asarray(buffer.data, dtype=np.uint8)
    if buffer.offset > 1 and buffer.size > 0:  # data appended after the flatbuffer
        return np.frombuffer(content, np.uint8, count=buffer.size, offset=buffer.offset)
    return None


def _describe(
    tensor: Any,
    data: np.ndarray,
    index: int,
    readers: dict[int, list[int]],
    operators: list,
) -> WeightTensor:
    shape = _shape(tensor)
    numpy_type = _NUMPY_TYPES.get(tensor.type)
    values = None if numpy_type is None else data.view(numpy_type)
    stored = len(values) if values is not None else len(data)
    sparsity = None
    if values is not None:
        zero = _zero_point(tensor)
        sparsity = 1.0 - np.count_nonzero(values != zero) / max(int(np.prod(shape)), 1)
    chains = tuple(_chains(index, readers, operators))
    if tensor.sparsity is None:
        storage, block = Storage.DENSE, None
    else:
        block = _block_shape(tensor.sparsity, len(shape))
        first_ops = {chain.split(">")[0] for chain in chains}
        if "DENSIFY" in first_ops:
            storage = Storage.DENSIFIED
        elif first_ops and first_ops <= SPARSE_KERNEL_OPS:
            storage = Storage.NATIVE
        else:
            storage = Storage.UNSUPPORTED
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return WeightTensor(
        name=name.split(";")[0],
        shape=shape,
        dtype=_TYPE_NAMES.get(tensor.type, str(tensor.type)),
        sparsity=sparsity,
        storage=storage,
        block=block,
        stored_values=stored,
        consumers=chains,
    )


def _zero_point(tensor: Any) -> int:
    """The stored value of a real zero: the zero point of a per-tensor quantized tensor."""
    quantization = tensor.quantization
    points = None if quantization is None else quantization.zeroPoint
    if points is not None and len(points) == 1:
        return int(points[0])
    return 0


def _block_shape(sparsity: Any, rank: int) -> tuple[int, ...]:
    """Block shape of sparse storage: dims ``rank..`` of the metadata hold block sizes."""
    block = [1] * rank
    metadata = sparsity.dimMetadata or []
    for j, dim in enumerate(_indices(sparsity.blockMap)):
        if rank + j < len(metadata):
            block[dim] = int(metadata[rank + j].denseSize)
    return tuple(block)
