"""Plain-text tables for the reports' ``__str__``."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Columns left-aligned for text, right-aligned when every cell is numeric-looking."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_numeric(r[i]) for r in cells) and cells for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("%", "").strip()
    try:
        float(stripped)
    except ValueError:
        return text in {"-", "n/a"}
    return True


def kib(size: int) -> str:
    """A byte count in KiB with one decimal."""
    return f"{size / 1024:,.1f}"
