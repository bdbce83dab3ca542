"""Keras -> .tflite, validated against Keras, with a size and storage report."""

from __future__ import annotations

import gzip
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tflite_export import _data
from tflite_export.flatbuffer import Storage, WeightTensor, inspect_weights, read_tflite, schema
from tflite_export.micro import (
    MicroCheck,
    MicroUnavailable,
    c_identifier,
    c_source,
    check_micro,
    micro_runtime,
)
from tflite_export.runtime import RUNTIME_XNNPACK, load, predict
from tflite_export.xnnpack import XnnpackCheck
from tflite_export.xnnpack import check as check_xnnpack
from tfstatprune.masking import m_by_n_pattern
from tfstatprune.tables import Table, format_text, kib

__all__ = [
    "ExportError",
    "ExportReport",
    "QUANTIZE_MODES",
    "REPRESENTATIVE_EXAMPLES",
    "TOLERANCES",
    "Tolerance",
    "Validation",
    "ValidationError",
    "convert",
    "export",
    "validate",
]

#: Values of ``quantize``: None keeps float32 weights and arithmetic.
QUANTIZE_MODES = (None, "dynamic", "float16", "int8")
#: Examples of ``representative_data`` used to calibrate int8 activations
#: (the TFLite guide suggests 100-500).
REPRESENTATIVE_EXAMPLES = 100
#: At most this many examples are compared in validation.
VALIDATION_EXAMPLES = 128
#: Random inputs (uniform in [0, 1), seed 0) used when no data is given.
RANDOM_EXAMPLES = 32
_RANDOM_SEED = 0
_FLOAT = "float32"
_GZIP_LEVEL = 9
#: What LiteRT does with N:M-sparse kernels (the report's line for them).
M_BY_N_NOTE = (
    "the .tflite format has no N:M encoding and LiteRT no N:M kernel, so these run with "
    "the storage above (no N:M speed-up; the pattern serves accelerators that read it)"
)


class Tolerance(NamedTuple):
    """What validation accepts for one export mode.

    Attributes:
      max_abs: bound on ``max |tflite - keras|`` over all outputs, scaled by
        ``max(1, max |keras|)`` so that it is absolute for outputs in [-1, 1]
        (probabilities) and relative for larger ones (logits).
      min_argmax_agreement: minimum fraction of *decisive* examples whose argmax
        (predicted class) is unchanged; checked for outputs with > 1 column.
        An example is decisive when Keras's top output exceeds its second by
        more than the ``max_abs`` bound: near-ties (untrained models, random
        inputs) may flip under any rounding and are not held against the file.
    """

    max_abs: float
    min_argmax_agreement: float


#: Per mode. Observed on trained LeNet-300-100 (MNIST test inputs): float32
#: 3e-7, float16 4e-4, dynamic 4e-3, int8 1.6e-2 with every prediction kept.
TOLERANCES: dict[str, Tolerance] = {
    _FLOAT: Tolerance(1e-5, 1.0),
    "float16": Tolerance(1e-2, 0.99),
    "dynamic": Tolerance(5e-2, 0.98),
    "int8": Tolerance(1e-1, 0.95),
}


class ExportError(ValueError):
    """The converter produced a model that would compute wrong outputs."""


@dataclass(frozen=True)
class Validation:
    """The comparison of the .tflite model with Keras.

    Attributes:
      examples: number of inputs compared.
      inputs: where they came from (``"sample_inputs"``, ``"representative_data"``,
        ``"random uniform [0, 1)"``).
      max_abs_diff: ``max |tflite - keras|`` over all outputs.
      bound: the accepted maximum (:class:`Tolerance` scaled by the outputs).
      argmax_agreement: fraction of all examples with the same argmax (None for
        a single output column).
      decisive: number of examples whose Keras top-2 margin exceeds ``bound``.
      decisive_agreement: fraction of those with the same argmax (None when
        there are none); the value that is checked.
      min_argmax_agreement: the accepted minimum.
      runtime: what ran the .tflite model (``"XNNPACK"``, ``"builtin kernels"``).
      xnnpack_error: why XNNPACK could not prepare the model, if it could not.
    """

    examples: int
    inputs: str
    max_abs_diff: float
    bound: float
    argmax_agreement: float | None
    decisive: int
    decisive_agreement: float | None
    min_argmax_agreement: float
    runtime: str
    xnnpack_error: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the outputs are within tolerance (NaN fails)."""
        close = bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.bound)
        agree = (
            self.decisive_agreement is None or self.decisive_agreement >= self.min_argmax_agreement
        )
        return close and agree

    def __str__(self) -> str:
        agreement = ""
        if self.argmax_agreement is not None:
            decisive = (
                "no decisive example"
                if self.decisive_agreement is None
                else f"{self.decisive_agreement:.1%} of {self.decisive} decisive, "
                f"min {self.min_argmax_agreement:.0%}"
            )
            agreement = f", argmax agreement {self.argmax_agreement:.1%} ({decisive})"
        verdict = "passed" if self.passed else "FAILED"
        text = (
            f"validation vs Keras: {verdict}: max |diff| {self.max_abs_diff:.2e} "
            f"(bound {self.bound:.1e}){agreement}; {self.examples} examples "
            f"({self.inputs}), run with {self.runtime}"
        )
        if self.xnnpack_error:
            text += (
                f"\n  warning: XNNPACK (LiteRT's default CPU delegate) cannot prepare this "
                f"model ({self.xnnpack_error.strip()}); apps must run it without XNNPACK "
                f"(benchmark_model --use_xnnpack=false), or export with sparse=False"
            )
        return text


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote (or, with ``written=False``, refused to write).

    Attributes:
      path: the .tflite file.
      quantize: the quantization mode (None: float32).
      sparse: whether sparse storage was asked for.
      stripped: whether pruning wrappers were removed first.
      size_bytes: file size.
      gzip_bytes: size after ``gzip -9`` (what an app download costs).
      weights: every weight tensor with its sparsity and storage.
      validation: the comparison with Keras (None when not validated).
      static_batch: the fixed batch size of the signature (recurrent models),
        None for a dynamic batch.
      stateful: whether the file keeps state in variable tensors between
        ``invoke()`` calls (fused LSTM): apps call ``reset_all_variables()``
        before each sequence.
      written: whether ``path`` was written (False after a failed validation).
      c_array: the ``.cc`` file holding the model as a C array (None: not asked).
      micro: TFLM's run of the model (arena, outputs vs Keras), when checked.
      micro_note: why TFLM was not run (``tflite-micro`` not installed).
      xnnpack: which subgraph XNNPACK runs sparse (:mod:`tflite_export.xnnpack`).
      m_by_n: ``(layer name, (m, n))`` for every kernel of the Keras model with an
        N:M pattern (:func:`tfstatprune.masking.m_by_n_pattern`); the report says
        the runtime does not use it (:data:`M_BY_N_NOTE`).
    """

    path: Path
    quantize: str | None
    sparse: bool
    stripped: bool
    size_bytes: int
    gzip_bytes: int
    weights: tuple[WeightTensor, ...]
    validation: Validation | None
    static_batch: int | None = None
    stateful: bool = False
    written: bool = True
    c_array: Path | None = None
    micro: MicroCheck | None = None
    micro_note: str | None = None
    xnnpack: XnnpackCheck | None = None
    m_by_n: tuple[tuple[str, tuple[int, int]], ...] = ()

    def count(self, storage: Storage) -> int:
        """Number of weight tensors with this storage."""
        return sum(w.storage is storage for w in self.weights)

    def __str__(self) -> str:
        mode = self.quantize or _FLOAT
        header = (
            f"TFLite export {self.path.name}: {mode}, sparse storage "
            f"{'on' if self.sparse else 'off'}"
            f"{', pruning wrappers stripped' if self.stripped else ''}"
            f"{'' if self.written else ' (NOT written)'}\n"
            f"  size {kib(self.size_bytes)} KiB raw, {kib(self.gzip_bytes)} KiB gzipped"
        )
        if self.static_batch is not None:
            header += (
                f"\n  signature batch size fixed to {self.static_batch} (recurrent layers need "
                "static TensorList shapes)"
            )
        if self.stateful:
            header += (
                "\n  recurrent state is kept in variable tensors between invoke() calls: call "
                "reset_all_variables() before each new sequence"
            )
        rows = [
            (
                w.name,
                "x".join(str(d) for d in w.shape),
                w.dtype,
                "n/a" if w.sparsity is None else f"{w.sparsity:.1%}",
                w.describe_storage(),
            )
            for w in self.weights
        ]
        parts = [
            header,
            format_text(
                Table(("weight", "shape", "dtype", "sparsity", "storage"), rows), indent="  "
            ),
        ]
        parts.append(f"  {self.validation}" if self.validation else "  not validated")
        if self.c_array is not None:
            parts.append(
                f"  C array for TFLite Micro: {self.c_array} and {self.c_array.with_suffix('.h')}"
            )
            parts.append(
                f"  {self.micro}" if self.micro else f"  not run with TFLM: {self.micro_note}"
            )
        if self.xnnpack is not None:
            parts.append(f"  {self.xnnpack}")
        if self.m_by_n:
            layers = ", ".join(f"{name} {m}:{n}" for name, (m, n) in self.m_by_n)
            parts.append(f"  N:M pattern in {layers}: {M_BY_N_NOTE}")
        return "\n".join(parts)


class ValidationError(AssertionError):
    """The .tflite outputs differ from Keras beyond the tolerance; nothing was written.

    Attributes:
      report: the :class:`ExportReport` (``written`` is False).
      content: the rejected .tflite bytes, to inspect (write them to a file of
        your own; :func:`export` leaves the target path as it was).
    """

    def __init__(self, message: str, report: ExportReport, content: bytes = b""):
        super().__init__(message)
        self.report = report
        self.content = content


def export(
    model: Any,
    path: str | os.PathLike[str],
    *,
    sparse: bool = True,
    quantize: str | None = None,
    representative_data: Any = None,
    validate: bool = True,
    sample_inputs: Any = None,
    overwrite: bool = False,
    atol: float | None = None,
    c_array: str | os.PathLike[str] | None = None,
    verbose: bool = True,
) -> ExportReport:
    """Convert a (pruned) tf_keras model to .tflite, check it, write it, report.

    Pruning wrappers (tfstatprune's ``PruneStatistically``, tfmot's
    ``PruneLowMagnitude``) are stripped first with
    :func:`tfstatprune.strip_pruning`. Modes (``quantize``):

    - None: float32 weights and arithmetic; validated to 1e-5.
    - ``"dynamic"``: int8 weights, activations quantized on the fly.
    - ``"float16"``: float16 weights, float32 arithmetic.
    - ``"int8"``: full integer: int8 weights and activations calibrated on
      :data:`REPRESENTATIVE_EXAMPLES` examples of ``representative_data``, and
      **int8 input and output** (what integer-only NPUs and microcontrollers
      need). Feed it ``round(x / scale) + zero_point`` with the input tensor's
      quantization parameters; :func:`validate` and
      :func:`tflite_export.benchmark` do so. Integer inputs (``Embedding``
      ids) stay integer, in the calibration and validation data too.

    ``sparse=True`` adds ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: weights at
    least 30 % zero are stored compressed. Only ``FULLY_CONNECTED`` runs them
    sparse (float32 1x4 blocks along the input dimension, int8 1x16); other
    sparse weights are expanded by a ``DENSIFY`` op at load (smaller file, no
    speed-up). The report says which is which.

    Models with recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``) are
    converted from a signature of batch size :data:`STATIC_BATCH`: the
    converter needs static TensorList shapes (with a dynamic batch it fails
    with "'tf.TensorListReserve' op requires element_shape to be static").

    ``c_array="model_data.cc"`` also writes the model as a C array for
    TensorFlow Lite for Microcontrollers (the ``.cc`` and a ``.h`` beside it;
    see :mod:`tflite_export.micro`). Where the ``tflite-micro`` package is
    installed, the model is first run with TFLM: the report gives the tensor
    arena it needs and TFLM's outputs are checked against Keras like
    LiteRT's. Microcontroller builds want ``sparse=False`` (TFLM has no
    ``DENSIFY`` and no sparse kernel) and usually ``quantize="int8"``.

    The file is written to a temporary file in ``path``'s directory, validated
    there, and only then moved to ``path``: a failed check leaves ``path`` as
    it was (absent, or the previous file byte for byte, also with
    ``overwrite=True``). The C array files follow the same rule.

    Args:
      model: a tf_keras model, possibly with pruning wrappers.
      path: the .tflite file to write.
      sparse: store sparse weights compressed.
      quantize: None, ``"dynamic"``, ``"float16"`` or ``"int8"``.
      representative_data: inputs like the training data, required for
        ``"int8"``: an array of examples, ``(x, y)``, or a ``tf.data.Dataset``
        of ``x`` or ``(x, y)`` (batched or not).
      validate: compare the .tflite outputs with Keras (see :data:`TOLERANCES`).
      sample_inputs: validation inputs (same forms as ``representative_data``);
        default: ``representative_data``, else :data:`RANDOM_EXAMPLES` uniform
        random inputs (float inputs only).
      overwrite: replace an existing file.
      atol: override the mode's ``Tolerance.max_abs``.
      c_array: also write the model as a C array to this ``.cc`` file (and
        its ``.h``), checked with TFLM where ``tflite-micro`` is installed.
      verbose: print the report.

    Returns:
      The :class:`ExportReport` (also printed when ``verbose``).

    Raises:
      FileExistsError: when ``path`` exists and ``overwrite`` is False.
      FileNotFoundError: when ``path``'s directory does not exist.
      ValueError: for an unknown ``quantize``, or ``"int8"`` without data.
      ExportError: when the converted model would compute wrong outputs for a
        reason found in the file: an op without a sparse kernel reads
        compressed weights (float16 with 1x4-block sparsity), or block storage
        drops the last inputs of a layer whose input dimension is not a
        multiple of the block; or TFLM cannot run the model (``c_array``);
        nothing is written.
      ValidationError: when validation fails; nothing is written, the message
        says what differs and what to do, ``.report`` has the numbers and
        ``.content`` the rejected bytes.
    """
    path = Path(path)
    _check_target(path, overwrite)
    sources = _c_array_paths(c_array, path)
    for source_path in sources:
        _check_target(source_path, overwrite)
    model, stripped = strip_if_pruned(model)
    data = source = None
    if validate:  # before the conversion: bad inputs fail fast
        data, source = _validation_inputs(model, sample_inputs, representative_data)
    content = convert(
        model, sparse=sparse, quantize=quantize, representative_data=representative_data
    )
    weights = inspect_weights(content)
    _refuse_wrong_storage(model, weights, path)
    temporary = _write_temporary(path, content)
    try:
        checked = micro = None
        if validate:
            written = read_tflite(temporary)  # what is on disk is what is checked
            checked = _compare(model, written, str(path), data, source, quantize, atol)
        passed = checked is None or checked.passed
        micro_note = None
        if sources and passed:
            micro, micro_note = _check_micro(model, content, data, quantize, atol, path)
            passed = micro is None or micro.passed
        report = ExportReport(
            path=path,
            quantize=quantize,
            sparse=sparse,
            stripped=stripped,
            size_bytes=len(content),
            gzip_bytes=len(gzip.compress(content, compresslevel=_GZIP_LEVEL)),
            weights=weights,
            validation=checked,
            static_batch=STATIC_BATCH if needs_static_batch(model) else None,
            stateful=bool(variable_tensors(content)),
            written=passed,
            c_array=sources[0] if sources else None,
            micro=micro,
            micro_note=micro_note,
            xnnpack=check_xnnpack(content),
            m_by_n=m_by_n_kernels(model),
        )
        if passed:
            texts = _c_texts(content, sources, micro)
            temporaries = [
                _write_temporary(p, t.encode()) for p, t in zip(sources, texts, strict=True)
            ]
            try:
                for temp, target in zip(temporaries, sources, strict=True):
                    _move_into_place(temp, target, overwrite)
                _move_into_place(temporary, path, overwrite)
            finally:
                for temp in temporaries:
                    temp.unlink(missing_ok=True)
    finally:
        temporary.unlink(missing_ok=True)
    if verbose:
        print(report)
    if checked is not None and checked.xnnpack_error:
        warnings.warn(
            f"{path}: XNNPACK cannot prepare this model; it runs on the builtin kernels only",
            RuntimeWarning,
            stacklevel=2,
        )
    before = "left as it was" if path.exists() else "not written"
    if checked is not None and not checked.passed:
        hint = _failure_hint(model, content, checked, data, source, quantize, sparse, atol, path)
        raise ValidationError(
            f"{path} {before}: the converted model does not match Keras: {checked}. {hint}",
            report,
            content,
        )
    if micro is not None and not micro.passed:
        raise ValidationError(
            f"{path} and its C array {before}: {micro}. LiteRT's outputs do match: TFLM's "
            f"kernels compute this model differently; do not ship the array (compare the "
            f"layers' outputs under TFLM to find the op).",
            report,
            content,
        )
    return report


def _c_array_paths(c_array: str | os.PathLike[str] | None, path: Path) -> list[Path]:
    """``[.cc, .h]`` for ``c_array``, or ``[]``."""
    if c_array is None:
        return []
    source = Path(c_array)
    if source.suffix not in C_SUFFIXES:
        raise ValueError(
            f"c_array must name a C/C++ source file ({', '.join(C_SUFFIXES)}): {source}"
        )
    header = source.with_suffix(".h")
    if path.resolve() in (source.resolve(), header.resolve()):
        raise ValueError(f"c_array {source} would overwrite the .tflite file {path}")
    return [source, header]


#: File suffixes accepted for ``c_array``.
C_SUFFIXES = (".cc", ".cpp", ".c")


def _check_micro(
    model: Any,
    content: bytes,
    data: np.ndarray | None,
    quantize: str | None,
    atol: float | None,
    path: Path,
) -> tuple[MicroCheck | None, str | None]:
    """``(TFLM's check, None)`` or ``(None, why TFLM was not run)``.

    Raises:
      ExportError: when TFLM cannot run the model (an op it lacks).
    """
    try:
        micro_runtime()
    except MicroUnavailable as error:
        return None, str(error)
    tolerance = TOLERANCES[quantize or _FLOAT].max_abs if atol is None else atol
    x = data if data is not None else np.zeros((0, *_example_shape(model)), _input_dtype(model))
    checked = check_micro(content, model, x, tolerance)
    if checked.error is not None:
        fix = (
            " Export with sparse=False: TFLM has no DENSIFY op and no sparse kernel."
            if "DENSIFY" in checked.error
            else ""
        )
        raise ExportError(f"not writing {path}: {checked}.{fix}")
    return checked, None


def _c_texts(content: bytes, sources: Sequence[Path], micro: MicroCheck | None) -> list[str]:
    if not sources:
        return []
    source, header = sources
    arena = None if micro is None else micro.arena_bytes
    return list(c_source(content, c_identifier(source.stem), header.name, arena))


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give the path of the .tflite file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of {path} does not exist")


def _write_temporary(path: Path, content: bytes) -> Path:
    """``content`` in a new hidden file beside ``path`` (same file system: the move is atomic)."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    return Path(name)


def _move_into_place(temporary: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:  # a hard link fails if path appeared meanwhile: no file is clobbered
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it"
            ) from None
        os.replace(temporary, path)


def _refuse_wrong_storage(model: Any, weights: Sequence[WeightTensor], path: Path) -> None:
    """Raise :class:`ExportError` for storage that computes wrong outputs (nothing written)."""
    broken = [w for w in weights if w.storage is Storage.UNSUPPORTED]
    if broken:
        readers = ", ".join(sorted({c for w in broken for c in w.consumers}))
        raise ExportError(
            f"not writing {path}: the converter stored {len(broken)} weight(s) sparse for ops "
            f"that cannot read sparse data ({readers}), which computes wrong outputs (seen "
            f"with quantize='float16' on 1x4-block sparse weights). Export with "
            f"sparse=False, or quantize=None to keep the native sparse kernel."
        )
    for weight, layers in _dropped_inputs(model, weights):
        outputs, inputs = weight.shape
        block = weight.block[-1]
        kept = inputs - inputs % block
        fits = (
            " Or export with quantize=None or 'dynamic': float32 1x4 blocks fit this layer."
            if weight.dtype == "int8" and inputs % BLOCK_FLOAT == 0
            else ""
        )
        raise ExportError(
            f"not writing {path}: the converter stored the kernel of layer(s) {layers} "
            f"({inputs} inputs, {outputs} outputs) in 1x{block} blocks, which cover only the "
            f"first {kept} inputs: the weights of inputs {kept}..{inputs - 1} are dropped and "
            f"the file would compute wrong outputs. TFLite's block-sparse format needs an "
            f"input dimension that is a multiple of {block}. Export with sparse=False (dense "
            f"storage), or give the layer a multiple of {block} inputs.{fits}"
        )


#: The block (along the input dimension) of float32 block-sparse storage.
BLOCK_FLOAT = 4


def _dropped_inputs(
    model: Any, weights: Sequence[WeightTensor]
) -> list[tuple[WeightTensor, list[str]]]:
    """Block-stored ``[out, in]`` weights whose partial last block held non-zeros.

    The converter encodes ``floor(in / b)`` blocks per output row and silently
    drops the rest. Which Keras kernel a weight came from is found by shape
    (``[in, out]``); a weight no kernel matches counts as dropped.
    """
    found = []
    for weight in weights:
        if weight.storage is not Storage.NATIVE or weight.block is None:
            continue
        if len(weight.shape) != 2 or weight.shape[1] % weight.block[-1] == 0:
            continue
        outputs, inputs = weight.shape
        kept = inputs - inputs % weight.block[-1]
        layers = [
            layer.name
            for layer in model.submodules
            for kernel in [getattr(layer, "kernel", None)]
            if kernel is not None and tuple(kernel.shape) == (inputs, outputs)
        ]
        tails = [
            np.any(np.asarray(model.get_layer(name).kernel)[kept:] != 0)
            for name in layers
            if _has_layer(model, name)
        ]
        if not tails or any(tails):
            found.append((weight, layers or [weight.name]))
    return found


def _has_layer(model: Any, name: str) -> bool:
    try:
        model.get_layer(name)
    except ValueError:
        return False
    return True


def _failure_hint(
    model: Any,
    content: bytes,
    checked: Validation,
    data: np.ndarray,
    source: str,
    quantize: str | None,
    sparse: bool,
    atol: float | None,
    path: Path,
) -> str:
    """What went wrong and the fix, found by running the variants that could pass."""
    if checked.runtime == RUNTIME_XNNPACK:
        builtin = _compare(model, content, str(path), data, source, quantize, atol, xnnpack=False)
        if builtin.passed:
            return (
                f"On the builtin kernels (XNNPACK off) it does match (max |diff| "
                f"{builtin.max_abs_diff:.2e}): XNNPACK computes this model wrongly (seen "
                f"for quantize='dynamic' with 1x16-block sparse weights). Run it with "
                f"XNNPACK off, or export with sparse=False."
            )
    if sparse:
        dense = convert(model, sparse=False, quantize=quantize, representative_data=data)
        without = _compare(model, dense, str(path), data, source, quantize, atol)
        if without.passed:
            return (
                f"With dense storage it does match (max |diff| {without.max_abs_diff:.2e}): "
                f"the sparse storage the converter chose computes wrong outputs. Export with "
                f"sparse=False."
            )
    if quantize is None:
        return (
            "The float32 conversion itself differs from Keras: a layer the converter "
            "rewrites differently (a custom layer, a training-only branch, a stateful "
            "layer). Compare the layers' outputs one by one to find it; do not ship this file."
        )
    return (
        f"This is quantization error beyond what quantize={quantize!r} is held to: calibrate "
        f"on representative_data drawn from the training inputs (at least "
        f"{REPRESENTATIVE_EXAMPLES} examples), or use a milder mode ('float16', 'dynamic'). "
        f"Accept a larger difference (atol=) only after measuring the file's accuracy on "
        f"held-out data (error.content holds the bytes; tflite_export.benchmark(..., data=))."
    )


def strip_if_pruned(model: Any) -> tuple[Any, bool]:
    """``(model without pruning wrappers, whether there were any)``."""
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    from tfstatprune import strip_pruning
    from tfstatprune._translate import require_tf_keras_model

    model = require_tf_keras_model(model)
    wrapped = any(isinstance(m, pruning_wrapper.PruneLowMagnitude) for m in model.submodules)
    return (strip_pruning(model, keras_version=2), True) if wrapped else (model, False)


def m_by_n_kernels(model: Any) -> tuple[tuple[str, tuple[int, int]], ...]:
    """``(layer name, (m, n))`` for each layer whose kernel has an N:M pattern."""
    from tfstatprune.structure.walk import leaf_layers

    found = []
    for layer in leaf_layers(model):
        kernel = getattr(layer, "kernel", None)
        pattern = None if kernel is None else m_by_n_pattern(np.asarray(kernel))
        if pattern is not None:
            found.append((layer.name, pattern))
    return tuple(found)


def needs_static_batch(model: Any) -> bool:
    """Whether ``model`` has a recurrent layer (its TensorList ops need a static batch)."""
    from tfstatprune._keras import keras

    return any(isinstance(m, keras.layers.RNN) for m in model.submodules)


def variable_tensors(content: bytes) -> list[str]:
    """Names of the variable tensors of a .tflite model (recurrent state kept across calls)."""
    flat = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    return [
        t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        for g in flat.subgraphs or []
        for t in g.tensors or []
        if t.isVariable
    ]


def convert(
    model: Any,
    *,
    sparse: bool = True,
    quantize: str | None = None,
    representative_data: Any = None,
) -> bytes:
    """The .tflite bytes of a plain tf_keras model (see :func:`export` for the modes)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates activations on representative_data; pass some "
            "training inputs (an array, (x, y), or a tf.data.Dataset)"
        )
    converter = _converter(model)
    optimizations = [] if quantize is None else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        calibration = _data.examples(
            representative_data,
            _example_shape(model),
            REPRESENTATIVE_EXAMPLES,
            _input_dtype(model),
        )
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8  # integer (id) inputs stay as they are
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # int8 I/O: the converter notes that it has no input statistics; the
        # calibration gives them.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        return converter.convert()


#: The batch size of the signature of models that need a static one (recurrent layers).
STATIC_BATCH = 1


def _converter(model: Any) -> tf.lite.TFLiteConverter:
    """A converter for ``model``; a static batch of :data:`STATIC_BATCH` for recurrent models."""
    if not needs_static_batch(model):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    specs = [tf.TensorSpec((STATIC_BATCH, *i.shape[1:]), i.dtype) for i in model.inputs]
    if len(specs) == 1:
        function = tf.function(lambda x: model(x, training=False))
    else:
        function = tf.function(lambda *x: model(list(x), training=False))
    concrete = function.get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


def _representative(x: np.ndarray):
    def generate() -> Iterator[list[np.ndarray]]:
        for example in x:
            yield [example[None]]

    return generate


def _example_shape(model: Any) -> tuple[int | None, ...]:
    if len(model.inputs) != 1:
        raise ValueError(
            f"{model.name} has {len(model.inputs)} inputs; calibration and validation "
            "support single-input models (pass validate=False to skip validation)"
        )
    return tuple(model.inputs[0].shape[1:])


def _input_dtype(model: Any) -> np.dtype:
    return np.dtype(model.inputs[0].dtype.as_numpy_dtype)


def _validation_inputs(model: Any, sample_inputs: Any, representative_data: Any):
    shape, dtype = _example_shape(model), _input_dtype(model)
    if sample_inputs is not None:
        return _data.examples(sample_inputs, shape, VALIDATION_EXAMPLES, dtype), "sample_inputs"
    if representative_data is not None:
        x = _data.examples(representative_data, shape, VALIDATION_EXAMPLES, dtype)
        return x, "representative_data"
    if any(d is None for d in shape):
        raise ValueError(f"{model.name} has an input of unknown shape {shape}; pass sample_inputs")
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"{model.name} takes {dtype} inputs (ids, e.g. for an Embedding): random floats "
            "would not be valid inputs; pass sample_inputs (or representative_data) with "
            "examples of them"
        )
    rng = np.random.default_rng(_RANDOM_SEED)
    return rng.random((RANDOM_EXAMPLES, *shape), dtype=np.float32), "random uniform [0, 1)"


def validate(
    model: Any,
    tflite: bytes | str | os.PathLike[str],
    inputs: Any,
    *,
    quantize: str | None = None,
    atol: float | None = None,
) -> Validation:
    """Compare a .tflite model with the Keras model it came from.

    Args:
      model: the plain tf_keras model.
      tflite: the .tflite bytes or file.
      inputs: inputs (array, ``(x, y)`` or ``tf.data``); at most
        :data:`VALIDATION_EXAMPLES` are used.
      quantize: the export mode, which picks the :data:`TOLERANCES` entry.
      atol: override the mode's ``Tolerance.max_abs``.

    Returns:
      The :class:`Validation` (check ``.passed``).
    """
    if isinstance(tflite, bytes | bytearray):
        content, name = bytes(tflite), "model"
    else:
        content, name = read_tflite(tflite), str(tflite)
    x = _data.examples(inputs, _example_shape(model), VALIDATION_EXAMPLES, _input_dtype(model))
    return _compare(model, content, name, x, "inputs", quantize, atol)


def _compare(
    model: Any,
    content: bytes,
    name: str,
    x: np.ndarray,
    source: str,
    quantize: str | None,
    atol: float | None,
    *,
    xnnpack: bool = True,
) -> Validation:
    if len(model.outputs) != 1:
        raise ValueError(
            f"{model.name} has {len(model.outputs)} outputs; validation supports "
            "single-output models (pass validate=False)"
        )
    tolerance = TOLERANCES[quantize or _FLOAT]
    loaded = load(content, name, xnnpack=xnnpack)
    got = predict(loaded.interpreter, x)
    expected = np.asarray(model(x, training=False), np.float32).reshape(got.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    bound = (tolerance.max_abs if atol is None else atol) * scale
    diff = float(np.abs(got - expected).max())
    agreement = decisive_agreement = None
    decisive = 0
    if got.ndim > 1 and got.shape[-1] > 1:
        same = got.argmax(-1) == expected.argmax(-1)
        top2 = np.sort(expected, axis=-1)[..., -2:]
        is_decisive = (top2[..., 1] - top2[..., 0]) > bound
        agreement = float(same.mean())
        decisive = int(is_decisive.sum())
        decisive_agreement = float(same[is_decisive].mean()) if decisive else None
    return Validation(
        examples=len(x),
        inputs=source,
        max_abs_diff=diff,
        bound=bound,
        argmax_agreement=agreement,
        decisive=decisive,
        decisive_agreement=decisive_agreement,
        min_argmax_agreement=tolerance.min_argmax_agreement,
        runtime=loaded.runtime,
        xnnpack_error=loaded.xnnpack_error,
    )
