"""The ``tfstatprune`` command.

Subcommands (``tfstatprune <command> --help`` for their options):

* ``demo``: train LeNet-300-100 on MNIST, prune it up to 99 % one-shot and
  iteratively with the Wald test and with magnitude, compare them, export to
  TFLite (the program is :mod:`tfstatprune.demo`).
* ``compare``: every criterion one-shot on the same trained model, over seeds
  (:mod:`tfstatprune.compare`).
* ``export``: write a Keras model as .tflite, validated, with a size report
  (:mod:`tflite_export.cli`).
* ``bench``: batch-1 latency (and accuracy) of .tflite files side by side.

Each subcommand is one :class:`Command`: a name, a help line, a function adding
its arguments to an ``argparse`` parser and a function running it on the parsed
arguments. The command line only parses and reports; the work is done by the
same functions a user would call.

This module also holds what the commands share: plain-text and markdown tables
(:class:`Table`) and :class:`OutputDir`, which refuses to overwrite files the
command did not write.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "COMMANDS",
    "Command",
    "CommandError",
    "OutputConflict",
    "OutputDir",
    "Table",
    "UsageError",
    "build_parser",
    "format_markdown",
    "format_text",
    "load_example",
    "main",
]

PROG = "tfstatprune"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

DEMO_DEFAULT_OUT = Path("runs") / "demo"
DEMO_DEFAULT_SEED = 0

_EXAMPLES_PACKAGE = "examples"
_HASH_CHUNK = 1 << 20


class CommandError(Exception):
    """An error the command reports in one line (no traceback)."""


class OutputConflict(CommandError):
    """An output path exists and was not written by this command."""


class UsageError(CommandError):
    """A wrong command line (a missing or unreadable input, say): exit status 2, as argparse."""


# ----------------------------------------------------------------------- tables


class Table(NamedTuple):
    """A table of already formatted cells.

    Attributes:
      headers: the column titles.
      rows: the rows, each with one string per column.
      align: one character per column, ``"l"`` (left) or ``"r"`` (right).
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str


def _check_table(table: Table) -> None:
    width = len(table.headers)
    if len(table.align) != width or set(table.align) - {"l", "r"}:
        raise ValueError(f"align must be {width} characters from 'l' and 'r', got {table.align!r}")
    for row in table.rows:
        if len(row) != width:
            raise ValueError(f"every row needs {width} cells, got {len(row)}: {row!r}")


def _pad(cell: str, width: int, align: str) -> str:
    return cell.rjust(width) if align == "r" else cell.ljust(width)


def format_text(table: Table) -> str:
    """The table as aligned plain text: header, a rule, rows; two spaces between columns.

    Example:
      >>> print(format_text(Table(["model", "acc"], [["dense", "98.1%"]], "lr")))
      model    acc
      -----  -----
      dense  98.1%
    """
    _check_table(table)
    widths = [
        max(len(cell) for cell in column) for column in zip(table.headers, *table.rows, strict=True)
    ]
    lines = [
        [_pad(c, w, a) for c, w, a in zip(table.headers, widths, table.align, strict=True)],
        ["-" * w for w in widths],
        *(
            [_pad(c, w, a) for c, w, a in zip(row, widths, table.align, strict=True)]
            for row in table.rows
        ),
    ]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _markdown_cell(cell: str) -> str:
    return cell.replace("|", "\\|")


def format_markdown(table: Table) -> str:
    """The table as GitHub-flavoured markdown, columns aligned as in ``table.align``.

    Example:
      >>> print(format_markdown(Table(["model", "acc"], [["dense", "98.1%"]], "lr")))
      | model | acc |
      |:--|--:|
      | dense | 98.1% |
    """
    _check_table(table)
    rule = {"l": ":--", "r": "--:"}
    lines = [
        "| " + " | ".join(_markdown_cell(c) for c in table.headers) + " |",
        "|" + "|".join(rule[a] for a in table.align) + "|",
        *("| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- outputs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OutputDir:
    """A directory whose files a command may overwrite only if it wrote them.

    Every file the command writes is recorded, with its SHA-256 and any details
    the command wants to keep (how a cached model was trained, say), in a small
    JSON manifest in the same directory (:attr:`MANIFEST`). A file that exists
    but is not in the manifest, or has changed since it was recorded, belongs to
    the user: :meth:`check` refuses to go on unless ``force`` is given.

    Args:
      path: the directory (created on the first write).
      tool: who writes, recorded with each file (e.g. ``"tfstatprune demo"``).

    Example::

        out = OutputDir("runs/demo", tool="tfstatprune demo")
        out.check(["model.keras"])           # raises OutputConflict for a foreign file
        model.save(out.path("model.keras"))
        out.record("model.keras", epochs=8)
    """

    MANIFEST = "tfstatprune-outputs.json"
    _FORMAT = 1

    def __init__(self, path: str | os.PathLike[str], tool: str) -> None:
        self.root = Path(path)
        self.tool = tool

    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    def path(self, name: str) -> Path:
        """Where the output ``name`` goes."""
        return self.root / name

    def _read_manifest(self) -> dict[str, Any] | None:
        """The manifest's file records, {} when there is none, None when it is not ours."""
        path = self.manifest_path
        if not path.exists():
            return {}
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if (
            not isinstance(content, dict)
            or content.get("written_by") != PROG
            or not isinstance(content.get("files"), dict)
        ):
            return None
        return content["files"]

    def recorded(self, name: str) -> dict[str, Any] | None:
        """The details recorded for ``name`` if it is ours and unchanged, else None."""
        files = self._read_manifest() or {}
        entry = files.get(name)
        path = self.path(name)
        if not isinstance(entry, dict) or not path.is_file():
            return None
        if entry.get("sha256") != _sha256(path):
            return None
        return dict(entry.get("details", {}))

    def conflicts(self, names: Iterable[str]) -> list[Path]:
        """The paths among ``names`` (and the manifest) that exist and are not ours."""
        if self.root.exists() and not self.root.is_dir():
            return [self.root]
        files = self._read_manifest()
        found = []
        if files is None:
            found.append(self.manifest_path)
            files = {}
        for name in names:
            path = self.path(name)
            if path.is_dir() or (path.exists() and self.recorded(name) is None):
                found.append(path)
        return found

    def check(self, names: Iterable[str], *, force: bool = False) -> None:
        """Refuse (raise) if writing ``names`` would overwrite something not ours.

        Args:
          names: the file names the command is going to write.
          force: overwrite files not written by the command (never directories).

        Raises:
          OutputConflict: naming every such path and how to proceed.
        """
        found = self.conflicts(names)
        if force:
            found = [p for p in found if p.is_dir() or p == self.root]
        if found:
            listed = ", ".join(str(p) for p in found)
            raise OutputConflict(
                f"refusing to overwrite {listed}: not written by {self.tool} (or changed "
                "since). Choose another directory with --out, move the file(s) away, or "
                "pass --force to overwrite them."
            )

    def record(self, name: str, **details: Any) -> Path:
        """Record the file ``name`` (just written) as ours, with ``details``."""
        path = self.path(name)
        files = self._read_manifest() or {}
        files[name] = {"tool": self.tool, "sha256": _sha256(path), "details": details}
        manifest = {"written_by": PROG, "format": self._FORMAT, "files": files}
        temporary = self.manifest_path.with_name(self.MANIFEST + ".tmp")
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
        os.replace(temporary, self.manifest_path)
        return path

    def write_text(self, name: str, text: str, **details: Any) -> Path:
        """Write ``text`` to ``name`` and record it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.path(name).write_text(text, encoding="utf-8")
        return self.record(name, **details)


# --------------------------------------------------------------------- examples


def load_example(name: str) -> ModuleType:
    """The module ``examples/<name>.py`` of the source tree tfstatprune runs from.

    The examples live next to the package in the repository (they are meant to
    be read); an installed wheel does not contain them.

    Raises:
      CommandError: when the examples are not there.
    """
    module_name = f"{_EXAMPLES_PACKAGE}.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parent.parent / _EXAMPLES_PACKAGE / f"{name}.py"
    if not path.is_file():
        raise CommandError(
            f"{path} is missing: the examples ship with the source tree, not with the "
            "installed package. Clone the repository and install it with `pip install -e .`."
        )
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise CommandError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


# --------------------------------------------------------------------- commands


class Command(NamedTuple):
    """One subcommand of ``tfstatprune``.

    Attributes:
      name: what the user types after ``tfstatprune``.
      help: one line for ``tfstatprune --help``.
      description: the paragraph of ``tfstatprune <name> --help``.
      add_arguments: adds the subcommand's options to its parser.
      run: runs it on the parsed arguments; returns the exit status.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


_positive_int = int_at_least(1)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=DEMO_DEFAULT_OUT,
        help="output directory: models, .tflite files, demo.png, results.md, results.json "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEMO_DEFAULT_SEED, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (about a minute): 1 epoch on a subset, 3 levels, fewer examples "
        "for the statistics (accuracies are then far from the full run's)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs of dense training (default: 8, or 1 with --quick)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in --out that the demo did not write",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from tfstatprune import demo  # imports cli (OutputDir, Table): import it when used

    config = demo.DemoConfig.from_options(
        out=args.out, seed=args.seed, quick=args.quick, epochs=args.epochs, force=args.force
    )
    demo.run(config)
    return EXIT_OK


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from tfstatprune import compare  # imports cli: import it when used

    compare.add_arguments(parser)


def _run_compare(args: argparse.Namespace) -> int:
    from tfstatprune import compare

    return compare.run_from_args(args)


def _from_tflite_export(name: str) -> Callable[[Any], Any]:
    """``tflite_export.cli.<name>``, imported when called (tflite_export imports tfstatprune)."""

    def call(argument: Any) -> Any:
        from tflite_export import cli as export_cli

        return getattr(export_cli, name)(argument)

    return call


COMMANDS: tuple[Command, ...] = (
    Command(
        name="demo",
        help="LeNet-300-100 on MNIST pruned up to 99%% by the Wald test and by magnitude",
        description=(
            "Train LeNet-300-100 on MNIST (or reuse the model a previous run trained with "
            "the same settings), prune it one-shot (no retraining) and iteratively inside "
            "fit to 50, 80, 90, 95, 98 and 99% of every layer's weights by the Wald "
            "statistic (the default criterion wald) and by magnitude, print test accuracy "
            "per level, draw "
            "demo.png, export the dense and Wald-pruned models to TFLite and time them. "
            "Everything is saved in --out. Files there that the demo did not write are "
            "never overwritten without --force."
        ),
        add_arguments=_add_demo_arguments,
        run=_run_demo,
    ),
    Command(
        name="compare",
        help="prune one trained model one-shot by every criterion; accuracy, compression, speedup",
        description=(
            "Train a model on MNIST once per seed (or reuse the one a previous run trained "
            "with the same settings), prune it one-shot by every criterion to every sparsity, "
            "optionally retrain each pruned model with its zeros kept, and print test "
            "accuracy (mean and standard deviation over the seeds), compression ratio and "
            "theoretical speedup. The table (markdown), the numbers (JSON) and a plot go "
            "to --out; files there the command did not write are never overwritten "
            "without --force."
        ),
        add_arguments=_add_compare_arguments,
        run=_run_compare,
    ),
    Command(
        name="export",
        help="write a Keras model (pruned or not) as .tflite, validated against Keras",
        description=(
            "Load MODEL (a .keras or .h5 file; pruning wrappers are stripped), convert it "
            "to TFLite (float32, or --quantize), check the .tflite outputs against Keras "
            "and print the file size and how every weight tensor is stored (dense, sparse "
            "and densified at load, or run by the native sparse kernel). An existing "
            "OUT.tflite is replaced only with --overwrite."
        ),
        add_arguments=_from_tflite_export("add_export_arguments"),
        run=_from_tflite_export("run_export"),
    ),
    Command(
        name="bench",
        help="batch-1 latency (and accuracy) of .tflite files, side by side",
        description=(
            "Time one invoke() of each .tflite file with the LiteRT interpreter, the "
            "files interleaved round by round so that they see the same machine load; "
            "print p50/p90 latency, file size raw and gzipped, how the weights are "
            "stored, the accuracy on the MNIST test set with --data mnist, and the adb "
            "commands that repeat the measurement with benchmark_model on an Android phone."
        ),
        add_arguments=_from_tflite_export("add_bench_arguments"),
        run=_from_tflite_export("run_bench"),
    ),
)


def _command(name: str) -> Command:
    for command in COMMANDS:
        if command.name == name:
            return command
    raise ValueError(f"no command {name!r}; the commands are {[c.name for c in COMMANDS]}")


def build_parser(prog: str = PROG, *, command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tfstatprune``, one subparser per command.

    Args:
      prog: the program name shown in help and errors.
      command: build the parser of this command alone (for a script that runs
        one command, such as ``python -m examples.demo``).
    """
    from tfstatprune import __version__

    if command is not None:
        chosen = _command(command)
        parser = argparse.ArgumentParser(prog=prog, description=chosen.description)
        chosen.add_arguments(parser)
        parser.set_defaults(run=chosen.run, command=chosen.name)
        return parser
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Statistical (Wald) pruning for tf_keras models: experiments and tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="command", required=True)
    for each in COMMANDS:
        sub = subparsers.add_parser(each.name, help=each.help, description=each.description)
        each.add_arguments(sub)
        sub.set_defaults(run=each.run)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG, command: str | None = None) -> int:
    """Run the ``tfstatprune`` command line; returns the exit status.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).
      prog: the program name shown in help and errors.
      command: run this command, ``argv`` being its options only.
    """
    parser = build_parser(prog, command=command)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CommandError as err:
        where = prog if command is not None else f"{prog} {args.command}"
        print(f"{where}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's main, not this __main__ copy: tflite_export.cli raises
    # tfstatprune.cli's error classes, which main() must catch.
    from tfstatprune.cli import main as package_main

    sys.exit(package_main())
