"""Sufficient statistics of per-example gradients, one record per weight tensor.

For a weight tensor theta and examples i = 1..n with per-example loss m_i, the
per-example score is s_i = d m_i / d theta. Everything the criteria need is a
function of

- ``count``:  n, the number of examples actually used;
- ``sum``:    sum_i s_i                 (float64, shape of theta);
- ``sumsq``:  sum_i s_i ** 2            (float64, shape of theta);
- ``curvature``: sum_i of a per-example curvature estimate of diag H, e.g. the
  squared per-example gradient with a label sampled from the model's own
  predictive distribution (a Monte-Carlo generalized Gauss-Newton diagonal)
  or the exact GGN diagonal (the expectation over all labels); ``None`` when
  not collected;
- ``regularizer_curvature``: the diagonal Hessian of the weight's regularizer
  (for an L2 penalty ``l2 * sum(theta ** 2)``, ``2 * l2`` everywhere).

Per chunk the sums are float32 on the device; chunks are added in float64 (on
the device by the collector, or with :meth:`WeightStatistics.merge`), which
keeps the variance ``sumsq / n - (sum / n) ** 2`` accurate to float64 round-off over the chunks.
The loss is a mean over examples in training, ``Q = (1/n) sum_i m_i``; the
statistics are about the per-example m_i, so they do not depend on how the
training loss was reduced.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["WeightStatistics"]


class WeightStatistics(NamedTuple):
    """Per-example gradient moments of one weight tensor (see module docstring)."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    curvature: np.ndarray | None = None
    regularizer_curvature: np.ndarray | float = 0.0
    kronecker: Any = None  # KroneckerFactors of the layer, on a Dense kernel when asked
    activations: Any = None  # ActivationStatistics of the layer, on its kernel when asked

    @classmethod
    def zeros(cls, shape: tuple[int, ...], *, with_curvature: bool = False) -> WeightStatistics:
        """An empty record (n = 0) for a weight of ``shape``."""
        z = np.zeros(shape, np.float64)
        return cls(0, z, z.copy(), z.copy() if with_curvature else None)

    def merge(self, other: WeightStatistics) -> WeightStatistics:
        """Combine two disjoint sets of examples (sums add, in float64)."""
        if self.sum.shape != other.sum.shape:
            raise ValueError(
                f"cannot merge statistics of shapes {self.sum.shape} and {other.sum.shape}"
            )
        if (self.curvature is None) != (other.curvature is None):
            raise ValueError("cannot merge statistics with and without curvature")
        curvature = None
        if self.curvature is not None:
            curvature = np.add(self.curvature, other.curvature, dtype=np.float64)
        return WeightStatistics(
            self.count + other.count,
            np.add(self.sum, other.sum, dtype=np.float64),
            np.add(self.sumsq, other.sumsq, dtype=np.float64),
            curvature,
            self.regularizer_curvature,
            self.kronecker.merge(other.kronecker)
            if self.kronecker is not None and other.kronecker is not None
            else None,
            self.activations.merge(other.activations)
            if self.activations is not None and other.activations is not None
            else None,
        )

    @property
    def mean(self) -> np.ndarray:
        """Mean per-example gradient, ``sum / n``."""
        return self.sum / max(self.count, 1)

    @property
    def second_moment(self) -> np.ndarray:
        """Mean squared per-example gradient, ``sumsq / n`` (the empirical Fisher diagonal)."""
        return self.sumsq / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        """Per-example gradient variance ``sumsq / n - mean ** 2`` (clipped at 0)."""
        return np.maximum(self.second_moment - self.mean**2, 0.0)

    @property
    def ggn(self) -> np.ndarray:
        """Mean curvature, ``curvature / n``: the GGN diagonal (sampled or exact)."""
        if self.curvature is None:
            raise ValueError(
                "these statistics hold no curvature; collect them with hessian='ggn' or "
                "hessian='ggn_exact'"
            )
        return self.curvature / max(self.count, 1)
