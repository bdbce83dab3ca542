"""A statistical stopping rule: is the pruned model significantly worse than the dense one?

McNemar's test on paired predictions over the same held-out examples
(McNemar 1947; Dietterich 1998 recommends it for comparing two classifiers on
one test set). With ``b`` the examples only the dense model gets right and
``c`` those only the pruned model gets right, under ``H0`` (equal accuracy)
``b ~ Binomial(b + c, 1/2)``. The test is one-sided -- we only stop for a
model that is *worse* -- and exact (binomial) when ``b + c`` is small,
otherwise the continuity-corrected normal approximation of ``P(B >= b)``,
``1 - Phi((b - c - 1) / sqrt(b + c))`` (near 1 when the pruned model is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["McNemarResult", "mcnemar_worse", "choose_sparsity", "SparsityChoice"]

EXACT_BELOW = 50  # discordant pairs below which the exact binomial tail is used
DEFAULT_ALPHA = 0.05


class McNemarResult(NamedTuple):
    """Figures of one test: discordant counts, accuracies, the one-sided p-value."""

    dense_only: int  # b: the dense model right, the pruned one wrong
    pruned_only: int  # c: the pruned model right, the dense one wrong
    dense_accuracy: float
    pruned_accuracy: float
    p_value: float
    exact: bool

    def worse(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """True when the pruned model is significantly worse at level ``alpha``."""
        return self.p_value < alpha


def mcnemar_worse(dense_correct: Sequence[bool], pruned_correct: Sequence[bool]) -> McNemarResult:
    """One-sided McNemar test of ``H1: the pruned model is less accurate``.

    Args:
      dense_correct: per example, whether the dense model's prediction is right.
      pruned_correct: the same for the pruned model, on the same examples.

    Returns:
      :class:`McNemarResult`; ``p_value = P(B >= b)`` for ``B ~ Bin(b + c, 1/2)``
      (exact), or ``1 - Phi((b - c - 1) / sqrt(b + c))`` for large ``b + c``.

    >>> r = mcnemar_worse([1, 1, 1, 1, 0], [0, 0, 0, 1, 0])
    >>> (r.dense_only, r.pruned_only, round(r.p_value, 4))
    (3, 0, 0.125)
    """
    a = np.asarray(dense_correct, bool)
    p = np.asarray(pruned_correct, bool)
    if a.shape != p.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            "dense_correct and pruned_correct must be non-empty 1-D sequences of the same "
            f"length, got shapes {a.shape} and {p.shape}"
        )
    b = int(np.sum(a & ~p))
    c = int(np.sum(~a & p))
    n = b + c
    if n == 0:
        p_value, exact = 1.0, True
    elif n < EXACT_BELOW:
        p_value, exact = float(scipy_stats.binom.sf(b - 1, n, 0.5)), True
    else:
        z = (b - c - 1) / math.sqrt(n)  # P(B >= b) with the continuity correction
        p_value, exact = float(scipy_stats.norm.sf(z)), False
    return McNemarResult(b, c, float(a.mean()), float(p.mean()), p_value, exact)


class SparsityChoice(NamedTuple):
    """The sparsity chosen by :func:`choose_sparsity` and the test at every level tried."""

    sparsity: float
    tests: dict[float, McNemarResult]
    alpha: float

    def __str__(self) -> str:
        lines = [
            f"{'sparsity':>9} {'accuracy':>9} {'dense only':>11} {'pruned only':>12} "
            f"{'p (worse)':>10}  verdict"
        ]
        for level, t in self.tests.items():
            verdict = "worse" if t.worse(self.alpha) else "not worse"
            mark = "  <- chosen" if level == self.sparsity else ""
            lines.append(
                f"{level:>9.1%} {t.pruned_accuracy:>9.2%} {t.dense_only:>11} "
                f"{t.pruned_only:>12} {t.p_value:>10.3g}  {verdict}{mark}"
            )
        return "\n".join(lines)


def choose_sparsity(
    dense_correct: Sequence[bool],
    pruned_correct_at: dict[float, Sequence[bool]],
    alpha: float = DEFAULT_ALPHA,
) -> SparsityChoice:
    """The highest level, tried in increasing order, before the first significantly worse one.

    Stops at the first level whose pruned model is significantly worse than the
    dense one (one-sided McNemar at ``alpha``) and returns the level before it
    (0.0 when even the first is worse).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    chosen, tests = 0.0, {}
    for level in sorted(pruned_correct_at):
        test = mcnemar_worse(dense_correct, pruned_correct_at[level])
        tests[level] = test
        if test.worse(alpha):
            break
        chosen = level
    return SparsityChoice(chosen, tests, alpha)
