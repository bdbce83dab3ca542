"""The main job, runnable from the repository root: ``python -m examples.demo``.

The program is :mod:`tfstatprune.demo` (inside the package, so that an installed
``tfstatprune demo`` runs it too); read it there. This file only starts it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tfstatprune import demo


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.demo [options]``: the same as ``tfstatprune demo [options]``."""
    return demo.main(argv, prog="python -m examples.demo")


if __name__ == "__main__":
    sys.exit(main())
