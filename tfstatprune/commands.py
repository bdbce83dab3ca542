"""What every command of the ``tfstatprune`` program shares.

:class:`Command` (a name, help, the options, the function running it), the exit
statuses, the errors a command reports in one line (:class:`CommandError`,
:class:`UsageError`), the argparse type :func:`int_at_least`, :func:`run_command`
(parse, run, report an error) and :class:`OutputDir`, which refuses to overwrite
files the command did not write.

The command modules import this one -- :mod:`tfstatprune.demo`,
:mod:`tflite_export.cli` (``export``, ``bench``), ``benchmarks/compare.py`` -- and
:mod:`tfstatprune.cli`, the dispatch at the top, imports them: this module
imports nothing of either package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "Command",
    "CommandError",
    "OutputConflict",
    "OutputDir",
    "UsageError",
    "int_at_least",
    "run_command",
    "run_reporting",
]

PROG = "tfstatprune"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_HASH_CHUNK = 1 << 20


class CommandError(Exception):
    """An error the command reports in one line (no traceback)."""


class OutputConflict(CommandError):
    """An output path exists and was not written by this command."""


class UsageError(CommandError):
    """A wrong command line (a missing or unreadable input, say): exit status 2, as argparse."""


# --------------------------------------------------------------------- commands


class Command(NamedTuple):
    """One subcommand of ``tfstatprune``.

    Attributes:
      name: what the user types after ``tfstatprune``.
      help: one line for ``tfstatprune --help``.
      description: the paragraph of ``tfstatprune <name> --help``.
      add_arguments: adds the subcommand's options to its parser.
      run: runs it on the parsed arguments; returns the exit status.
      passes_options_on: the subcommand's parser takes every word after the
        command's name, ``--help`` included, as ``args.options`` (a list) and
        ``run`` parses them itself (a program loaded when it is run).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passes_options_on: bool = False


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


def run_reporting(
    run: Callable[[argparse.Namespace], int], args: argparse.Namespace, where: str
) -> int:
    """``run(args)``; a :class:`CommandError` becomes one line on stderr and an exit status.

    Args:
      run: what the command does with its parsed options.
      args: the parsed options.
      where: who reports the error (``"tfstatprune demo"``).

    Returns:
      ``run``'s exit status, :data:`EXIT_USAGE` for a :class:`UsageError`,
      :data:`EXIT_ERROR` for another :class:`CommandError`.
    """
    try:
        return run(args)
    except CommandError as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_ERROR


def run_command(command: Command, argv: Sequence[str] | None, prog: str) -> int:
    """Run one command as a program of its own (``python -m tfstatprune.demo``, say).

    Args:
      command: the command.
      argv: its options (default: ``sys.argv[1:]``).
      prog: the program name shown in help and errors.

    Returns:
      The exit status (argparse exits with status 2 on a wrong command line).
    """
    parser = argparse.ArgumentParser(prog=prog, description=command.description)
    command.add_arguments(parser)
    return run_reporting(command.run, parser.parse_args(argv), prog)


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
