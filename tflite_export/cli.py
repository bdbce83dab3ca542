"""The ``tfstatprune export`` and ``tfstatprune bench`` commands.

``tfstatprune export MODEL OUT.tflite`` loads a Keras model (pruning wrappers
and all) and writes it with :func:`tflite_export.export`, printing the
:class:`~tflite_export.ExportReport`. ``tfstatprune bench A.tflite B.tflite``
times the files side by side with :func:`tflite_export.benchmark` and prints
the table and the Android ``benchmark_model`` command lines. ``--data mnist``
takes the calibration, validation and accuracy examples from the MNIST test
set (:func:`tfstatprune.datasets.mnist`).

The two :class:`~tfstatprune.commands.Command` objects, :data:`EXPORT` and
:data:`BENCH`, are listed by :mod:`tfstatprune.cli`, the dispatch at the top,
which imports this module. Imports go one way: ``tfstatprune.cli`` ->
``tflite_export`` -> the tfstatprune library (here :mod:`tfstatprune.commands`,
:func:`tfstatprune.load_model`, :mod:`tfstatprune.datasets`); nothing in
tflite_export imports the dispatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

import tfstatprune
from tflite_export.bench import benchmark
from tflite_export.convert import ExportError, ValidationError, export
from tflite_export.flatbuffer import TFLiteFileError, read_tflite
from tflite_export.runtime import load
from tfstatprune import datasets
from tfstatprune.commands import EXIT_OK, Command, CommandError, UsageError, int_at_least

__all__ = [
    "BENCH",
    "EXPORT",
    "add_bench_arguments",
    "add_export_arguments",
    "run_bench",
    "run_export",
]

#: Values of ``--data``.
DATA_SOURCES = ("mnist",)
#: Values of ``--quantize`` (no option: float32).
QUANTIZE_CHOICES = ("dynamic", "float16", "int8")
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
BENCH_RUNS = 200
BENCH_WARMUP = 20


_positive_int = int_at_least(1)
_non_negative_int = int_at_least(0)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _hint(error: BaseException) -> str:
    """What the error says to do: the text after its last ``". "`` of the first line."""
    text = _first_line(error)
    return text.rsplit("). ", 1)[-1] if "). " in text else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------- export


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tfstatprune export``."""
    parser.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="the Keras model, a .keras or .h5 file (pruned or not; wrappers are stripped)",
    )
    parser.add_argument("out", type=Path, metavar="OUT.tflite", help="the .tflite file to write")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="int8 weights with float activations (dynamic), float16 weights, or full "
        "integer (int8, needs --data); default: float32",
    )
    parser.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default=None,
        help="calibrate (int8) and validate on the MNIST test images; default: validate "
        "on random inputs",
    )
    parser.add_argument(
        "--no-sparse",
        dest="sparse",
        action="store_false",
        help="store every weight dense (default: weights at least 30%% zero are stored sparse)",
    )
    parser.add_argument(
        "--c-array",
        type=Path,
        default=None,
        metavar="MODEL_DATA.cc",
        help="also write the model as a C array (and its .h) for TensorFlow Lite for "
        "Microcontrollers; with tflite-micro installed, report the tensor arena and check "
        "its outputs (use with --no-sparse, usually --quantize int8)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT.tflite (and C array)"
    )


def run_export(args: argparse.Namespace) -> int:
    """Load ``args.model``, export it to ``args.out``, print the report."""
    out: Path = args.out
    if out.is_dir():
        raise UsageError(f"{out} is a directory; give the path of the .tflite file to write")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"the directory of {out} does not exist")
    if args.quantize == "int8" and args.data is None:
        raise UsageError(
            "--quantize int8 calibrates the activations on example inputs; add --data mnist"
        )
    model = load_keras_model(args.model)
    data = None
    if args.data is not None:
        data = mnist_test(_input_shape(model))[0]
    mode = args.quantize or "float32"
    storage = "sparse storage on" if args.sparse else "dense storage"
    _progress(f"converting {args.model.name} to {mode} ({storage}) and validating")
    try:
        report = export(
            model,
            out,
            sparse=args.sparse,
            quantize=args.quantize,
            representative_data=data,
            overwrite=args.overwrite,
            c_array=args.c_array,
            verbose=True,
        )
    except ValidationError as error:
        print(error.report)
        raise CommandError(
            f"{out} was not written (an existing file is left as it was): the converted model "
            f"does not match Keras; see the report. {_hint(error)}"
        ) from error
    except ExportError as error:
        raise CommandError(_first_line(error)) from error
    except FileExistsError as error:
        raise UsageError(_first_line(error).replace("overwrite=True", "--overwrite")) from error
    except ValueError as error:  # e.g. a model with several inputs
        raise UsageError(_first_line(error)) from error
    _progress(f"wrote {report.path} ({report.size_bytes:,} bytes)")
    return EXIT_OK


def load_keras_model(path: Path) -> Any:
    """A model from a .keras/.h5 file (Keras 3 or tf_keras), pruning wrappers included.

    Raises:
      UsageError: when the file is missing or is not a Keras model.
    """
    if not path.exists():
        raise UsageError(f"model file not found: {path}")
    if path.is_dir() or path.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(
            f"{path} is not a Keras model file: expected {', '.join(MODEL_SUFFIXES)} "
            "(saved with model.save)"
        )
    _progress(f"loading {path}")
    try:
        return tfstatprune.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad file
        raise UsageError(f"cannot load {path} as a Keras model: {_first_line(error)}") from error


def _input_shape(model: Any) -> tuple[int | None, ...]:
    if len(model.inputs) != 1:
        raise UsageError(f"--data mnist needs a model with one input; it has {len(model.inputs)}")
    return tuple(model.inputs[0].shape[1:])


def mnist_test(input_shape: tuple[int | None, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test images (reshaped to ``input_shape``) and labels.

    Raises:
      UsageError: when an image does not fit ``input_shape``.
      CommandError: when MNIST cannot be loaded.
    """
    size = int(np.prod(datasets.IMAGE_SHAPE))
    if None in input_shape or int(np.prod(input_shape)) != size:
        raise UsageError(
            f"--data mnist gives 28x28x1 images; the model takes inputs of shape {input_shape}"
        )
    _progress("loading the MNIST test set")
    try:
        data = datasets.mnist()
    except (RuntimeError, OSError) as error:
        raise CommandError(_first_line(error)) from error
    x = np.asarray(data.x_test).reshape((len(data.x_test), *input_shape))
    return x, np.asarray(data.y_test)


# ----------------------------------------------------------------------- bench


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tfstatprune bench``."""
    parser.add_argument(
        "models", type=Path, nargs="+", metavar="MODEL.tflite", help="the .tflite files to time"
    )
    parser.add_argument(
        "--threads", type=_positive_int, default=1, help="interpreter threads (default: 1)"
    )
    parser.add_argument(
        "--runs",
        type=_positive_int,
        default=BENCH_RUNS,
        help="timed runs per model (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=BENCH_WARMUP,
        help="untimed runs per model first (default: %(default)s)",
    )
    parser.add_argument(
        "--no-xnnpack",
        dest="xnnpack",
        action="store_false",
        help="run the builtin kernels only (default: XNNPACK, LiteRT's default delegate)",
    )
    parser.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default=None,
        help="time on a test image and add each model's accuracy on the 10,000 MNIST test images",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Time ``args.models`` side by side; print the table and the Android commands."""
    for path in args.models:
        try:
            read_tflite(path)
        except (FileNotFoundError, TFLiteFileError) as error:
            raise UsageError(_first_line(error)) from error
    data = None
    if args.data is not None:
        data = mnist_test(_tflite_input_shape(args.models[0]))
    count = len(args.models)
    _progress(
        f"timing {count} model{'s' if count > 1 else ''}: {args.runs} interleaved runs after "
        f"{args.warmup} warm-up runs, {args.threads} thread(s), "
        f"XNNPACK {'on' if args.xnnpack else 'off'}"
        + (f"; then accuracy on {len(data[0]):,} test images" if data is not None else "")
    )
    try:
        benchmark(
            args.models,
            threads=args.threads,
            runs=args.runs,
            warmup=args.warmup,
            xnnpack=args.xnnpack,
            data=data,
            verbose=True,
        )
    except TFLiteFileError as error:
        raise UsageError(_first_line(error)) from error
    except ValueError as error:  # inputs of another shape than the data
        raise UsageError(_first_line(error)) from error
    return EXIT_OK


def _tflite_input_shape(path: Path) -> tuple[int, ...]:
    try:
        loaded = load(read_tflite(path), str(path))
    except TFLiteFileError as error:
        raise UsageError(_first_line(error)) from error
    details = loaded.interpreter.get_input_details()
    if len(details) != 1:
        raise UsageError(f"--data mnist needs models with one input; {path} has {len(details)}")
    return tuple(int(d) for d in details[0]["shape"][1:])


EXPORT = Command(
    name="export",
    help="write a Keras model (pruned or not) as .tflite, validated against Keras",
    description=(
        "Load MODEL (a .keras or .h5 file; pruning wrappers are stripped), convert it "
        "to TFLite (float32, or --quantize), check the .tflite outputs against Keras "
        "and print the file size and how every weight tensor is stored (dense, sparse "
        "and densified at load, or run by the native sparse kernel). An existing "
        "OUT.tflite is replaced only with --overwrite."
    ),
    add_arguments=add_export_arguments,
    run=run_export,
)

BENCH = Command(
    name="bench",
    help="batch-1 latency (and accuracy) of .tflite files, side by side",
    description=(
        "Time one invoke() of each .tflite file with the LiteRT interpreter, the "
        "files interleaved round by round so that they see the same machine load; "
        "print p50/p90 latency, file size raw and gzipped, how the weights are "
        "stored, the accuracy on the MNIST test set with --data mnist, and the adb "
        "commands that repeat the measurement with benchmark_model on an Android phone."
    ),
    add_arguments=add_bench_arguments,
    run=run_bench,
)
