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
keeps the chunks' sums accurate to float64 round-off. The per-chunk float32
sums are not: a sum of b float32 terms carries a relative error up to
``b * u`` (``u = 2**-24``), so ``sumsq / n - (sum / n) ** 2`` is off by up to
``3 * b * u * sumsq / n`` (by Cauchy-Schwarz ``|sum| * sum|s| <= n sumsq``).
Measured: 256 copies of one example in one chunk left residues up to
1.0e-5 x ``sumsq / n`` (Wald scores up to 2e6 instead of 0), 2000 copies
4e-5. The collector records that bound as ``rounding`` and
:attr:`WeightStatistics.variance` counts a variance below
``max(VARIANCE_RTOL, rounding) x sumsq / n`` as 0: the data cannot tell it
from 0. A variance needs at least ``MIN_EXAMPLES = 2`` examples; asking for
it with fewer is an error.
The loss is a mean over examples in training, ``Q = (1/n) sum_i m_i``; the
statistics are about the per-example m_i, so they do not depend on how the
training loss was reduced.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tfstatprune.stats.activations import ActivationStatistics
from tfstatprune.stats.kronecker import KroneckerFactors

__all__ = [
    "MIN_EXAMPLES",
    "VARIANCE_RTOL",
    "LayerStatistics",
    "WeightStatistics",
    "chunk_rounding",
    "require_examples",
]

# The fewest examples a variance (or a covariance factor) is defined for.
MIN_EXAMPLES = 2
# A variance below this fraction of the second moment counts as 0 even for
# float64 sums (the floor under ``WeightStatistics.rounding``).
VARIANCE_RTOL = 1e-6
# Unit round-off of float32, the precision of the per-chunk sums.
FLOAT32_ROUNDOFF = 2.0**-24


def chunk_rounding(chunk_size: int) -> float:
    """Bound on ``|error of sumsq/n - mean^2| / (sumsq/n)`` for float32 sums of chunks.

    ``3 * b * u`` for chunks of ``b`` examples (module docstring).

    >>> chunk_rounding(256)
    4.57763671875e-05
    """
    return 3.0 * max(int(chunk_size), 1) * FLOAT32_ROUNDOFF


def require_examples(count: int, what: str) -> None:
    """Raise a clear error when ``count`` examples are too few for ``what`` (a variance).

    >>> require_examples(2, "the Wald criterion")
    >>> require_examples(1, "the Wald criterion")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the Wald criterion needs at least 2 examples (...); stats_data gave 1: ...
    """
    if count < MIN_EXAMPLES:
        raise ValueError(
            f"{what} needs at least {MIN_EXAMPLES} examples (it uses the variance of the "
            f"per-example gradients); stats_data gave {count}: pass more examples "
            "(stats_data, max_examples)"
        )


class LayerStatistics(NamedTuple):
    """Statistics of one layer as a whole, each None unless asked for.

    Attributes:
      kronecker: the Kronecker factors of a Dense or Conv layer's ``[W; b]``
        (:mod:`tfstatprune.stats.kronecker`).
      activations: the zero counts of its activations
        (:mod:`tfstatprune.stats.activations`).
    """

    kronecker: KroneckerFactors | None = None
    activations: ActivationStatistics | None = None

    def merge(self, other: LayerStatistics) -> LayerStatistics:
        """Combine two disjoint sets of examples; a record missing on either side is None."""
        return LayerStatistics(
            *(
                None if mine is None or theirs is None else mine.merge(theirs)
                for mine, theirs in zip(self, other, strict=True)
            )
        )


class _WeightFields(NamedTuple):
    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    curvature: np.ndarray | None = None
    regularizer_curvature: np.ndarray | float = 0.0
    layer: LayerStatistics | None = None
    rounding: float = 0.0


class WeightStatistics(_WeightFields):
    """Per-example gradient moments of one weight tensor (see module docstring).

    Attributes:
      count, sum, sumsq, curvature, regularizer_curvature: as in the module
        docstring.
      layer: the statistics of the layer that owns the weight
        (:class:`LayerStatistics`; the collector attaches them to the layer's
        kernel when asked for), or None.
      rounding: relative rounding bound of the variance, see :func:`chunk_rounding`.

    ``kronecker=`` and ``activations=`` (keyword only) build ``layer`` from its
    two records; ``kronecker`` and ``activations`` read them back.
    """

    __slots__ = ()

    def __new__(
        cls,
        count: int,
        sum: np.ndarray,  # noqa: A002 (the field's name)
        sumsq: np.ndarray,
        curvature: np.ndarray | None = None,
        regularizer_curvature: np.ndarray | float = 0.0,
        layer: LayerStatistics | None = None,
        rounding: float = 0.0,
        *,
        kronecker: KroneckerFactors | None = None,
        activations: ActivationStatistics | None = None,
    ) -> WeightStatistics:
        if kronecker is not None or activations is not None:
            if layer is not None:
                raise ValueError("pass layer= or kronecker=/activations=, not both")
            layer = LayerStatistics(kronecker, activations)
        return super().__new__(
            cls, count, sum, sumsq, curvature, regularizer_curvature, layer, rounding
        )

    def _replace(self, **changes: object) -> WeightStatistics:
        """As a NamedTuple's, and ``kronecker=``/``activations=`` replace the layer's records."""
        records = {f: changes.pop(f) for f in LayerStatistics._fields if f in changes}
        replaced = super()._replace(**changes)
        if not records:
            return replaced
        layer = (replaced.layer or LayerStatistics())._replace(**records)
        return super(WeightStatistics, replaced)._replace(layer=layer)

    @property
    def kronecker(self) -> KroneckerFactors | None:
        """The owning layer's Kronecker factors (``layer.kronecker``), or None."""
        return None if self.layer is None else self.layer.kronecker

    @property
    def activations(self) -> ActivationStatistics | None:
        """The owning layer's activation zero counts (``layer.activations``), or None."""
        return None if self.layer is None else self.layer.activations

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
            self.layer.merge(other.layer)
            if self.layer is not None and other.layer is not None
            else None,
            max(self.rounding, other.rounding),
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
        """Per-example gradient variance ``sumsq / n - mean ** 2``, round-off set to 0.

        A value below ``max(VARIANCE_RTOL, rounding) * sumsq / n`` (rounding of
        the float32 chunk sums, see the module docstring) is 0, as is a
        negative one.

        >>> WeightStatistics(3, np.array([3.0, 3.0]), np.array([3.0000001, 3.00003])).variance
        array([0.e+00, 1.e-05])

        (First entry: ``1.00000003 - 1 = 3.3e-8``, below ``1e-6 x 1.0``: 0.)

        Raises:
          ValueError: fewer than ``MIN_EXAMPLES`` examples.
        """
        require_examples(self.count, "the per-example gradient variance")
        second = self.second_moment
        variance = second - self.mean**2
        return np.where(variance > max(VARIANCE_RTOL, self.rounding) * second, variance, 0.0)

    @property
    def ggn(self) -> np.ndarray:
        """Mean curvature, ``curvature / n``: the GGN diagonal (sampled or exact)."""
        if self.curvature is None:
            raise ValueError(
                "these statistics hold no curvature; collect them with hessian='ggn' or "
                "hessian='ggn_exact'"
            )
        return self.curvature / max(self.count, 1)
