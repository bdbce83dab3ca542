"""The ``tfstatprune`` command: the dispatch at the top of both packages.

Subcommands (``tfstatprune <command> --help`` for their options):

* ``demo``: train LeNet-300-100 on MNIST, prune it up to 99 % one-shot and
  iteratively with the Wald test and with magnitude, compare them, export to
  TFLite (:mod:`tfstatprune.demo`).
* ``compare``: every criterion one-shot on the same trained model, over seeds.
  An experiment, not part of the library: it is ``benchmarks/compare.py`` of the
  source tree, and the command runs it from a clone (``pip install -e .``); an
  installed wheel says so.
* ``export``: write a Keras model as .tflite, validated, with a size report
  (:mod:`tflite_export.cli`).
* ``bench``: batch-1 latency (and accuracy) of .tflite files side by side
  (:mod:`tflite_export.cli`).

Each subcommand is one :class:`~tfstatprune.commands.Command` defined next to
the code it runs; this module only lists them, parses and reports. Imports go
one way, down: this module -> :mod:`tfstatprune.demo` and :mod:`tflite_export.cli`
-> :mod:`tflite_export` -> the tfstatprune library (:mod:`tfstatprune.commands`
and :mod:`tfstatprune.tables` at its bottom). Nothing imports this module but the
``tfstatprune`` console script, the tests and ``python -m tfstatprune.cli``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from tflite_export import cli as export_cli
from tfstatprune import __version__, demo
from tfstatprune.commands import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Command,
    CommandError,
    run_reporting,
)

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "load_example",
    "load_from_source_tree",
    "main",
]

#: The folder of the source tree above the package (a clone, not an installed wheel).
SOURCE_TREE = Path(__file__).resolve().parent.parent
_EXAMPLES_PACKAGE = "examples"
_BENCHMARKS_PACKAGE = "benchmarks"


# ------------------------------------------------------- programs of the clone


def load_from_source_tree(package: str, name: str) -> ModuleType:
    """The module ``<package>/<name>.py`` of the source tree tfstatprune runs from.

    ``examples/`` and ``benchmarks/`` live next to the package in the repository
    (they are meant to be read and run from a clone); an installed wheel does not
    contain them. The package is imported from that folder (so that its modules
    import each other as ``<package>.<module>``), whether or not the folder is on
    ``sys.path``.

    Raises:
      CommandError: when the file is not there, or another ``<package>`` is imported.
    """
    folder = SOURCE_TREE / package
    path = folder / f"{name}.py"
    if not path.is_file():
        raise CommandError(
            f"{path} is missing: {package}/ ships with the source tree, not with the "
            "installed package. Clone the repository and install it with `pip install -e .`."
        )
    loaded = sys.modules.get(package)
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
            raise CommandError(f"cannot load {folder}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[package] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[package]
            raise
    elif folder not in {Path(p).resolve() for p in getattr(loaded, "__path__", [])}:
        raise CommandError(
            f"the module {package!r} imported here is not {folder}: run from the repository"
        )
    return importlib.import_module(f"{package}.{name}")


def load_example(name: str) -> ModuleType:
    """The module ``examples/<name>.py`` of the source tree (see :func:`load_from_source_tree`)."""
    return load_from_source_tree(_EXAMPLES_PACKAGE, name)


def _pass_options_on(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="the options of the program (see its --help)"
    )


def _run_compare(args: argparse.Namespace) -> int:
    script = load_from_source_tree(_BENCHMARKS_PACKAGE, "compare")
    return script.main(args.options, prog=f"{PROG} compare")


COMPARE = Command(
    name="compare",
    help="prune one trained model one-shot by every criterion; accuracy, compression, "
    "speedup (runs benchmarks/compare.py of a source clone)",
    description=(
        "Run benchmarks/compare.py of the source tree (a clone installed with "
        "`pip install -e .`): every criterion one-shot on the same trained model, over "
        "seeds. `tfstatprune compare --help` shows its options."
    ),
    add_arguments=_pass_options_on,
    run=_run_compare,
    passes_options_on=True,
)

COMMANDS: tuple[Command, ...] = (demo.COMMAND, COMPARE, export_cli.EXPORT, export_cli.BENCH)


# ---------------------------------------------------------------------- parsing


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of ``tfstatprune``, one subparser per command.

    Args:
      prog: the program name shown in help and errors.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Statistical (Wald) pruning for tf_keras models: experiments and tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="command", required=True)
    for each in COMMANDS:
        # A command that parses its own options gets them all, "--help" included: no
        # option prefix, no -h of its own.
        own = {"add_help": False, "prefix_chars": "\0"} if each.passes_options_on else {}
        sub = subparsers.add_parser(each.name, help=each.help, description=each.description, **own)
        each.add_arguments(sub)
        sub.set_defaults(run=each.run)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the ``tfstatprune`` command line; returns the exit status.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).
      prog: the program name shown in help and errors.
    """
    args = build_parser(prog).parse_args(argv)
    return run_reporting(args.run, args, f"{prog} {args.command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
