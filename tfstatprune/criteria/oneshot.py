"""The field's one-shot baselines on the same layer-input statistics: SparseGPT, OBC, Wanda.

All three read only ``A = sum_i a~_i a~_i^T`` (the Kronecker input factor the
block criteria collect, :mod:`tfstatprune.stats.kronecker`), so a comparison
with ``wald_block`` runs on one set of statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfstatprune.criteria.block import (
    DEFAULT_DAMPING,
    _factors_of,
    _matrix,
    input_factor,
    layer_update,
    solver_update,
)
from tfstatprune.criteria.registry import StatsRequest, Update, register_criterion
from tfstatprune.criteria.solver import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MEMORY_BUDGET_MB,
    OBC_MAX_INPUTS,
    Pruned,
    inverse_cholesky,
    obc_prune,
)
from tfstatprune.stats.moments import WeightStatistics

__all__ = ["obc", "sparsegpt", "wanda"]


def _input_request(options: Mapping[str, Any]) -> StatsRequest:
    return StatsRequest("fisher", kronecker=True)


def _sparsegpt_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    keep: np.ndarray,
    **options: Any,
) -> Update:
    return solver_update(  # always the published algorithm, never the per-unit estimator
        kernel,
        bias,
        stats,
        keep,
        sequential=True,
        uniform=True,
        exact_flops=-1.0,
        name="sparsegpt",
        **options,
    )


@register_criterion(
    "sparsegpt", statistics=_input_request, update=_sparsegpt_update, fallback="obd"
)
def sparsegpt(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    damping: float = DEFAULT_DAMPING,
    block_size: int = DEFAULT_BLOCK_SIZE,
    adaptive: bool = True,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> np.ndarray:
    """SparseGPT (Frantar & Alistarh 2023, Algorithm 1): ``s_q = theta_q^2 / U_qq^2``.

    ``U`` is the upper Cholesky factor of ``A^-1`` (``U^T U = A^-1``, ``A``
    damped by ``damping * mean(diag A)`` as the paper's 1 %), so ``U_qq^2`` is
    ``[A[q:, q:]^-1]_qq``, the OBS denominator with the rows before ``q``
    frozen. After masking, input rows are processed in blocks of
    ``block_size``: each block's mask is chosen on the updated weights by this
    score at the layer's rate (``adaptive``), and each pruned row in turn
    passes its error ``theta_q / U_qq`` to the rows after it (lazy batched
    updates across blocks).

    >>> from tfstatprune.stats import WeightStatistics
    >>> from tfstatprune.stats.kronecker import KroneckerFactors
    >>> f = KroneckerFactors(1, np.array([[2.0, 0.0], [0.0, 4.0]]), np.eye(1), None, False)
    >>> sparsegpt(np.array([[1.0], [1.0]]), WeightStatistics(1, 0, 0, kronecker=f), damping=0.0)
    array([[2.],
           [4.]])
    """
    factors = _factors_of(theta, stats, "sparsegpt")
    matrix = _matrix(theta)
    u = inverse_cholesky(input_factor(factors, damping))
    rows = matrix.shape[0]
    scores = matrix**2 / (np.diag(u)[:rows, None] ** 2)
    return scores.reshape(np.shape(theta))


def _obc_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    keep: np.ndarray,
    *,
    choosable: np.ndarray | None = None,
    min_keep: np.ndarray | None = None,
    layer: str = "",
    damping: float = DEFAULT_DAMPING,
    max_inputs: int = OBC_MAX_INPUTS,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> Update:
    def solve(theta: np.ndarray, a: np.ndarray) -> Pruned:
        return obc_prune(
            theta,
            a,
            keep,
            choosable=choosable,
            min_keep=min_keep,
            max_inputs=max_inputs,
            memory_budget_mb=memory_budget_mb,
            layer=layer,
        )

    return layer_update(kernel, bias, stats, solve, damping=damping, name="obc")


@register_criterion("obc", statistics=_input_request, update=_obc_update, fallback="obd")
def obc(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    damping: float = DEFAULT_DAMPING,
    max_inputs: int = OBC_MAX_INPUTS,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> np.ndarray:
    """OBC / ExactOBS (Frantar, Singh & Alistarh 2022): ``s_q = theta_q^2 / [A^-1]_qq``.

    The score allocates how many weights each output unit loses; the update
    then prunes them one at a time, exactly greedy per unit (the least
    ``theta_q^2 / [A_F^-1]_qq`` goes, the survivors take the OBS step and
    ``A_F^-1`` is downdated), ``O(outputs x inputs^3)``: layers with more than
    ``max_inputs`` rows (kernel inputs and bias) are refused.

    >>> from tfstatprune.stats import WeightStatistics
    >>> from tfstatprune.stats.kronecker import KroneckerFactors
    >>> f = KroneckerFactors(1, np.array([[2.0, 0.0], [0.0, 4.0]]), np.eye(1), None, False)
    >>> obc(np.array([[1.0], [1.0]]), WeightStatistics(1, 0, 0, kronecker=f), damping=0.0)
    array([[2.],
           [4.]])
    """
    factors = _factors_of(theta, stats, "obc")
    matrix = _matrix(theta)
    a = input_factor(factors, damping)
    diagonal = np.diag(np.linalg.inv(a))[: matrix.shape[0]]
    return (matrix**2 / diagonal[:, None]).reshape(np.shape(theta))


@register_criterion("wanda", statistics=_input_request, group="sum", fallback="magnitude")
def wanda(theta: np.ndarray, stats: WeightStatistics) -> np.ndarray:
    """Wanda (Sun et al. 2024): ``s_ij = |theta_ij| * ||X_i||_2``, no weight update.

    ``||X_i||_2^2 = A_ii`` is the sum over examples (and positions, for a
    convolution's patches) of input ``i`` squared. The paper compares weights
    per output unit; here the masking step compares them over the layer
    (``scope="layer"``) or the model (``"global"``).

    >>> from tfstatprune.stats import WeightStatistics
    >>> from tfstatprune.stats.kronecker import KroneckerFactors
    >>> f = KroneckerFactors(1, np.array([[4.0, 1.0], [1.0, 1.0]]), np.eye(1), None, False)
    >>> wanda(np.array([[1.0], [-3.0]]), WeightStatistics(1, 0, 0, kronecker=f))
    array([[2.],
           [3.]])
    """
    factors = _factors_of(theta, stats, "wanda")
    matrix = _matrix(theta)
    norms = np.sqrt(np.maximum(np.diag(factors.inputs), 0.0))[: matrix.shape[0]]
    return (np.abs(matrix) * norms[:, None]).reshape(np.shape(theta))
