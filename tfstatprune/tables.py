"""Plain-text and markdown tables: the one formatter of every report and command.

A :class:`Table` holds already formatted cells; :func:`format_text` lays it out
for a terminal (the reports' ``__str__``: :class:`~tfstatprune.keras.SparsityReport`,
:class:`~tfstatprune.shrink.ShrinkResult`, :mod:`tflite_export`'s reports; the
commands' output) and :func:`format_markdown` for a results file.

This module imports nothing of tfstatprune or tflite_export: both packages
(the library, the exporter and the command line) import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Table", "format_markdown", "format_text", "kib", "numeric_align"]

#: Cells that count as numbers when :func:`numeric_align` chooses the alignment.
_NUMBER_PLACEHOLDERS = frozenset({"-", "n/a"})


class Table(NamedTuple):
    """A table of already formatted cells.

    Attributes:
      headers: the column titles.
      rows: the rows, each with one string per column.
      align: one character per column, ``"l"`` (left) or ``"r"`` (right);
        None: right for the columns of numbers (:func:`numeric_align`), left else.
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str | None = None

    def alignment(self) -> str:
        """:attr:`align`, or the one :func:`numeric_align` chooses when it is None."""
        return numeric_align(self.headers, self.rows) if self.align is None else self.align


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", "").replace("%", "").strip())
    except ValueError:
        return cell in _NUMBER_PLACEHOLDERS
    return True


def numeric_align(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right for a column whose every cell looks like a number (``1,024``, ``9.5%``, ``-``).

    A table without rows is left-aligned throughout.

    Example:
      >>> numeric_align(["layer", "size"], [["fc1", "1,024"], ["fc2", "n/a"]])
      'lr'
    """
    return "".join(
        "r" if rows and all(_is_number(row[i]) for row in rows) else "l"
        for i in range(len(headers))
    )


def _checked_alignment(table: Table) -> str:
    """The table's alignment, after checking that every row has a cell per column."""
    width = len(table.headers)
    for row in table.rows:
        if len(row) != width:
            raise ValueError(f"every row needs {width} cells, got {len(row)}: {row!r}")
    align = table.alignment()
    if len(align) != width or set(align) - {"l", "r"}:
        raise ValueError(f"align must be {width} characters from 'l' and 'r', got {align!r}")
    return align


def _pad(cell: str, width: int, align: str) -> str:
    return cell.rjust(width) if align == "r" else cell.ljust(width)


def format_text(table: Table, indent: str = "") -> str:
    """The table as aligned plain text: header, a rule, rows; two spaces between columns.

    Args:
      table: the table.
      indent: put before every line (trailing spaces are never kept).

    Example:
      >>> print(format_text(Table(["model", "acc"], [["dense", "98.1%"]], "lr")))
      model    acc
      -----  -----
      dense  98.1%
    """
    align = _checked_alignment(table)
    widths = [
        max(len(cell) for cell in column) for column in zip(table.headers, *table.rows, strict=True)
    ]
    lines = [
        [_pad(c, w, a) for c, w, a in zip(table.headers, widths, align, strict=True)],
        ["-" * w for w in widths],
        *(
            [_pad(c, w, a) for c, w, a in zip(row, widths, align, strict=True)]
            for row in table.rows
        ),
    ]
    return "\n".join((indent + "  ".join(line)).rstrip() for line in lines)


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
    align = _checked_alignment(table)
    rule = {"l": ":--", "r": "--:"}
    lines = [
        "| " + " | ".join(_markdown_cell(c) for c in table.headers) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
        *("| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines)


def kib(size: int) -> str:
    """A byte count in KiB with one decimal.

    Example:
      >>> kib(1_068_000)
      '1,043.0'
    """
    return f"{size / 1024:,.1f}"
