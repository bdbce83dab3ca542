"""Wald and OBS with the covariance kept within blocks, and the restricted estimator.

The diagonal sandwich throws away what makes the statistic work: with the
empirical Fisher it collapses to OBD. Here the asymptotic covariance of a Dense
kernel ``[W; b]`` (``[I + 1, O]``, see :mod:`tfstatprune.stats.kronecker`; a
Conv kernel is the ``[K * C_in + 1, C_out]`` matrix of its patches, with KFC
factors) keeps its structure through Kronecker factors:

    H ~ A (x) B_H,   Sigma ~ A (x) B_S,   A = E[a~ a~^T],
    Avar = H^-1 Sigma H^-1 = A^-1 (x) M,   M = B_H^-1 B_S B_H^-1,

so ``[Avar]_(i,j) = [A^-1]_ii M_jj`` and the Wald statistic of ``theta_ij = 0``
is ``W_ij = n theta_ij^2 / ([A^-1]_ii M_jj)``. Within an output unit this ranks
exactly like the Optimal Brain Surgeon saliency ``theta^2 / (2 [H^-1]_qq)``
with the layer-wise Hessian ``A`` (Hassibi & Stork 1993; layer-wise: Dong et
al. 2017); ``M_jj`` says how well the data pin down unit j as a whole.

When a set P of weights is pruned, the **restricted estimator** under
``H0: theta_P = 0`` moves the survivors to the constrained optimum of the local
quadratic: ``theta~ = theta^ - V[:, P] V[P, P]^-1 theta^_P`` with ``V = A^-1``
per output unit -- the OBS compensation. It is computed in that form while few
weights are pruned and in the equivalent form on the free set F,
``theta~_F = A_FF^-1 A_F: theta^``, once the pruned set is the larger one.

Numerics: ``A`` and ``B_H`` are damped by ``damping * mean(diag)`` (singular
blocks: blank pixels, dead units). The guard: ``M_jj`` is floored at
``variance_floor * [B_H^-1]_jj``, the sandwich may shrink a unit's variance
below the model-based ``H^-1`` by at most that factor. The score variance of a
unit that barely reaches the loss (active only on confidently classified
examples, or whose outgoing weights were pruned in an earlier sub-step)
shrinks faster than its curvature, ``M_jj -> 0``, and without the guard its
inputs would look the most significant weights of the layer. Measured on
LeNet-300-100 (seed 0, layer scope, 3 sub-steps, 2 epochs of retraining with
the masks held): a floor relative to ``mean(M)`` instead kept the inputs of
units cut off from the output, left the output layer reading dead units, and
reached 29 % / 47 % at 98 % and 11 % / 11 % at 99 % sparsity; with the guard
at 0.2, 51 % / 93 % and 31 % / 81 % (magnitude: 14 % / 92 %, 8 % / 73 %).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tfstatprune.criteria.registry import StatsRequest, Update, register_criterion
from tfstatprune.criteria.solver import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MEMORY_BUDGET_MB,
    Pruned,
    check_memory,
    solve_layer,
)
from tfstatprune.granularity import Grouping
from tfstatprune.stats.kronecker import KroneckerFactors
from tfstatprune.stats.moments import WeightStatistics, require_examples

__all__ = [
    "WALD_NAMES",
    "DEFAULT_DAMPING",
    "DEFAULT_EXACT_FLOPS",
    "DEFAULT_VARIANCE_FLOOR",
    "block_inverse_diagonals",
    "input_factor",
    "joint_error",
    "obs",
    "obs_scores",
    "layer_update",
    "output_variance",
    "restricted_update",
    "solver_update",
    "wald_block",
    "wald_block_scores",
]

DEFAULT_DAMPING = 0.01
# The per-unit estimator runs where it costs at most this many flops (a few seconds
# on a laptop core); above, the blocked solver.
DEFAULT_EXACT_FLOPS = 5e10
DEFAULT_VARIANCE_FLOOR = 0.2


def _damped(matrix: np.ndarray, damping: float) -> np.ndarray:
    mean_diag = float(np.mean(np.diag(matrix)))
    scale = mean_diag if mean_diag > 0 else 1.0
    return matrix + damping * scale * np.eye(len(matrix))


def input_factor(factors: KroneckerFactors, damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """The layer's damped input factor ``A = E[a~ a~^T] + damping * mean(diag) I``."""
    return _damped(factors.inputs / max(factors.count, 1), damping)


def _ratio_on_free(numerator: np.ndarray, denominator: np.ndarray, free: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` on the free entries with a positive denominator, else 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        value = numerator / denominator
    return np.where(free & (denominator > 0), value, 0.0)


def _augment(kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    kernel = np.asarray(kernel, np.float64)
    if bias is None:
        return kernel
    return np.vstack([kernel, np.asarray(bias, np.float64)[None, :]])


def _column_patterns(free: np.ndarray) -> list[list[int]]:
    """Columns of ``free`` (``[I, O]`` bool) grouped by identical free sets."""
    patterns: dict[bytes, list[int]] = {}
    for j in range(free.shape[1]):
        patterns.setdefault(free[:, j].tobytes(), []).append(j)
    return list(patterns.values())


def _free_inverse_diagonal(a: np.ndarray, free: np.ndarray) -> np.ndarray:
    """``[A_FF^-1]_kk`` for each column's free set F (``free``: ``[I, O]`` bool); 0 off F.

    With P the pruned complement, whichever is cheaper: ``inv(A_FF)`` (``|F|^3``)
    or the Schur complement of ``V = A^-1``,
    ``A_FF^-1 = V_FF - V_FP V_PP^-1 V_PF`` (``|P|^3 + |F| |P|^2``: few pruned).
    """
    out = np.zeros(free.shape)
    v = np.linalg.inv(a)
    for columns in _column_patterns(free):
        f = free[:, columns[0]]
        p = ~f
        if not f.any():
            continue
        if not p.any():
            diagonal = np.diag(v)
        elif 2 * p.sum() < f.sum():
            v_fp = v[np.ix_(f, p)]
            diagonal = np.diag(v)[f] - np.sum(v_fp * np.linalg.solve(v[np.ix_(p, p)], v_fp.T).T, 1)
        else:
            diagonal = np.diag(np.linalg.inv(a[np.ix_(f, f)]))
        out[np.ix_(f, columns)] = diagonal[:, None]
    return out


def output_variance(
    factors: KroneckerFactors,
    *,
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(M, m)``: the output factor ``M = B_H^-1 B_S B_H^-1`` and its guarded diagonal.

    ``m_j = max(M_jj, variance_floor * [B_H^-1]_jj)``: the sandwich may shrink
    a unit's variance below the model-based one (``H = Sigma``) at most by
    ``variance_floor``. A unit whose outgoing weights are gone has
    ``B_S -> 0`` faster than ``B_H``, so its sandwich variance vanishes and
    the Wald statistic of every weight into it would explode; the data say
    nothing about such weights (not identified), and the guard lets them score
    as low as their curvature says instead. ``B_S`` is a covariance: it needs
    at least ``MIN_EXAMPLES = 2`` examples (fewer raise a ``ValueError``); with
    fewer examples than outputs it is singular, which the floor absorbs.

    Statistics collected with ``hessian="fisher"`` (the empirical Fisher: any
    loss) have no curvature factor; then ``B_H = B_S`` (``H = Sigma``) and
    ``M = B_S^-1`` (damped): the OBS saliency weighted per output unit.
    """
    require_examples(factors.count, "the sandwich output factor M (wald_block)")
    n = factors.count
    curvature = factors.gradients if factors.curvature is None else factors.curvature
    b_h = _damped(curvature / n, damping if output_damping is None else output_damping)
    b_h_inv = np.linalg.inv(b_h)
    m_full = b_h_inv @ (factors.gradients / n) @ b_h_inv
    return m_full, np.maximum(np.diag(m_full), variance_floor * np.diag(b_h_inv))


def block_inverse_diagonals(
    factors: KroneckerFactors,
    free: np.ndarray,
    *,
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``([A_FF^-1]_kk per column, m_j)`` from the factors, for free sets ``free``."""
    inv_a = _free_inverse_diagonal(input_factor(factors, damping), free)
    _, m = output_variance(
        factors, damping=damping, variance_floor=variance_floor, output_damping=output_damping
    )
    return inv_a, m


def wald_block_scores(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    factors: KroneckerFactors,
    free: np.ndarray,
    *,
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
) -> np.ndarray:
    """``W_ij = n theta_ij^2 / ([A_FF^-1]_ii M_jj)`` for the ``[I(+1), O]`` block; 0 off F.

    ``free`` marks the weights not yet pruned (the statistic is conditional on
    the pruned ones being 0: ``A_FF`` instead of ``A``).
    """
    theta = _augment(kernel, bias)
    inv_a, m = block_inverse_diagonals(
        factors,
        free,
        damping=damping,
        variance_floor=variance_floor,
        output_damping=output_damping,
    )
    return _ratio_on_free(factors.count * theta**2, inv_a * m[None, :], free)


def obs_scores(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    factors: KroneckerFactors,
    free: np.ndarray,
    *,
    damping: float = DEFAULT_DAMPING,
) -> np.ndarray:
    """Layer-wise OBS saliency ``L_q = theta_q^2 / (2 [H^-1]_qq)`` with ``H = A_FF`` per unit.

    Hassibi & Stork 1993, eq. 5, with the layer-wise Hessian of the output
    reconstruction error (Dong et al. 2017), as the seed survey writes it.
    """
    theta = _augment(kernel, bias)
    inv_a = _free_inverse_diagonal(input_factor(factors, damping), free)
    return _ratio_on_free(theta**2, 2.0 * inv_a, free)


def restricted_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    factors: KroneckerFactors,
    keep: np.ndarray,
    *,
    damping: float = DEFAULT_DAMPING,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The restricted estimator: survivors re-fitted under ``theta_P = 0``, per output unit.

    Args:
      kernel, bias: the current estimate ``theta^`` (bias may be None).
      factors: the layer's Kronecker factors (only ``inputs`` is used).
      keep: ``[I(+1), O]`` bool, the weights that stay free (a bias row that
        is not pruned is free).
      damping: relative damping of ``A``.

    Returns:
      ``(kernel~, bias~)`` with ``theta~_F = A_FF^-1 A_F: theta^`` per column
      and zeros on P.
    """
    out = _restricted(_augment(kernel, bias), input_factor(factors, damping), keep)
    if bias is None:
        return out, None
    return out[:-1], out[-1]


def _restricted(theta: np.ndarray, a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """:func:`restricted_update` on the ``[I(+1), O]`` block ``theta`` and damped ``a``."""
    keep = np.asarray(keep, bool)
    out = np.zeros_like(theta)
    v = None
    for columns in _column_patterns(keep):
        f = keep[:, columns[0]]
        p = ~f
        if not f.any():
            continue
        if 2 * p.sum() < f.sum():  # few pruned: theta^ - V[:, P] V_PP^-1 theta^_P
            v = np.linalg.inv(a) if v is None else v
            t = theta[:, columns]
            moved = t - v[:, p] @ np.linalg.solve(v[np.ix_(p, p)], t[p])
            out[np.ix_(f, columns)] = moved[f]
        else:
            rhs = a[f] @ theta[:, columns]
            out[np.ix_(f, columns)] = np.linalg.solve(a[np.ix_(f, f)], rhs)
    return out


# --------------------------------------------------------------------------
# Registered criteria: "wald_block" and "obs" on Dense and Conv kernels.


def _matrix(theta: np.ndarray) -> np.ndarray:
    """A kernel as the ``[I, O]`` matrix of its Kronecker factors (Conv: ``I = K * C_in``)."""
    return np.reshape(theta, (-1, np.shape(theta)[-1]))


def _factors_of(theta: np.ndarray, stats: WeightStatistics | None, name: str) -> KroneckerFactors:
    factors = None if stats is None else stats.kronecker
    if factors is None or factors.inputs.shape[0] != _matrix(theta).shape[0] + factors.has_bias:
        raise ValueError(
            f"criterion {name!r} needs the Kronecker factors tfstatprune collects for Dense "
            f"and Conv1D/Conv2D kernels (groups=1), and this weight (shape {np.shape(theta)}) "
            "has none: prune only those layers with it (layers=[...]) or use 'wald_diag' / 'obd'"
        )
    return factors


def joint_error(
    before: np.ndarray, after: np.ndarray, a: np.ndarray, column_weight: np.ndarray | float
) -> float:
    """``sum_j w_j d_j^T A d_j``, ``d = after - before``: the joint statistic of a restriction.

    For a quadratic model ``1/2 d^T A d`` per output unit this is twice the
    increase the move costs, weighted per unit as the scores are (the OBS
    identity: pruning the single weight q with the update
    ``-theta_q A^-1 e_q / [A^-1]_qq`` gives ``theta_q^2 / [A^-1]_qq``, its
    saliency). A unit that does not move adds 0, whatever its weight.

    >>> a = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> theta = np.array([[1.0], [1.0]])
    >>> moved = theta - 1.0 * np.linalg.inv(a)[:, [0]] / np.linalg.inv(a)[0, 0]
    >>> saliency = 1.0**2 / np.linalg.inv(a)[0, 0]  # theta_0^2 / [A^-1]_00
    >>> round(joint_error(theta, moved, a, 1.0), 12), round(float(saliency), 12)
    (1.5, 1.5)
    """
    d = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    per_unit = np.einsum("rj,rs,sj->j", d, a, d)
    weight = np.broadcast_to(np.asarray(column_weight, np.float64), per_unit.shape)
    with np.errstate(invalid="ignore"):
        return float(np.sum(np.where(per_unit > 0, weight * per_unit, 0.0)))


def _free_rows(theta: np.ndarray, factors: KroneckerFactors) -> np.ndarray:
    """Free set of the augmented ``[I(+1), O]`` block: entries not yet pruned (non-zero)."""
    free = np.asarray(theta) != 0
    if factors.has_bias:
        free = np.vstack([free, np.ones((1, free.shape[1]), bool)])
    return free


def _bias_row(theta: np.ndarray, factors: KroneckerFactors) -> np.ndarray | None:
    return np.zeros(np.shape(theta)[1]) if factors.has_bias else None


def _block_request(options: Mapping[str, Any]) -> StatsRequest:
    hessian = options.get("hessian", "ggn_exact")
    return StatsRequest(hessian, kronecker=True, diagonal_curvature=False)


def _obs_request(options: Mapping[str, Any]) -> StatsRequest:
    return StatsRequest("fisher", kronecker=True)


def solver_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    keep: np.ndarray,
    *,
    choosable: np.ndarray | None = None,
    min_keep: np.ndarray | None = None,
    layer: str = "",
    damping: float = DEFAULT_DAMPING,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
    adaptive: bool = True,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    exact_flops: float = DEFAULT_EXACT_FLOPS,
    column_weight: np.ndarray | float = 1.0,
    sequential: bool = False,
    uniform: bool = False,
    name: str = "restricted estimator",
) -> Update:
    """The survivors of one layer re-fitted under the pruned set, and the final mask.

    The exact restricted estimator per output unit (:func:`restricted_update`)
    on the mask as given where it costs at most ``exact_flops`` (about
    ``min(|P|, |F|)^3`` per distinct free set: small layers, high sparsity) or
    ``block_size=None``; otherwise the blocked solver
    (:func:`tfstatprune.criteria.solver.solve_layer`), one Cholesky factor per
    layer, the mask chosen per block when ``adaptive``. One block covering the
    layer gives the same mask and update as the exact estimator.
    """
    keep = np.asarray(keep, bool)
    check_memory(keep.shape[0], keep.shape[1], memory_budget_mb, layer)
    if block_size is None or _per_unit_flops(keep) <= exact_flops:
        factors = _factors_of(kernel, stats, name)
        matrix = _matrix(kernel)
        if factors.has_bias and bias is None:
            bias = np.zeros(matrix.shape[1])
        theta = _augment(matrix, bias if factors.has_bias else None)
        a = input_factor(factors, damping)
        out = _restricted(theta, a, keep)
        rows = matrix.shape[0]
        new_bias = out[rows] if factors.has_bias else None
        error = joint_error(theta, out, a, column_weight)
        return Update(out[:rows].reshape(np.shape(kernel)), new_bias, keep, error)

    def solve(theta: np.ndarray, a: np.ndarray) -> Pruned:
        return solve_layer(
            theta,
            a,
            keep,
            choosable=choosable if adaptive else np.zeros(keep.shape, bool),
            column_weight=column_weight,
            min_keep=min_keep,
            block_size=block_size,
            sequential=sequential,
            uniform=uniform,
            memory_budget_mb=memory_budget_mb,
            layer=layer,
        )

    return layer_update(
        kernel, bias, stats, solve, damping=damping, column_weight=column_weight, name=name
    )


def layer_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    solve: Callable[[np.ndarray, np.ndarray], Pruned],
    *,
    damping: float = DEFAULT_DAMPING,
    column_weight: np.ndarray | float = 1.0,
    name: str = "restricted estimator",
) -> Update:
    """``solve(theta, A)`` on the layer's ``[I(+1), O]`` block and damped ``A``, as an Update
    whose error is :func:`joint_error` with ``column_weight``."""
    factors = _factors_of(kernel, stats, name)
    matrix = _matrix(kernel)
    if factors.has_bias and bias is None:
        bias = np.zeros(matrix.shape[1])
    theta = _augment(matrix, bias if factors.has_bias else None)
    a = input_factor(factors, damping)
    solved = solve(theta, a)
    rows = matrix.shape[0]
    new_bias = solved.theta[rows] if factors.has_bias else None
    error = joint_error(theta, solved.theta, a, column_weight)
    return Update(solved.theta[:rows].reshape(np.shape(kernel)), new_bias, solved.keep, error)


def _per_unit_flops(keep: np.ndarray) -> float:
    """Work of :func:`restricted_update` on ``keep``, in flops (the cheaper form per free set)."""
    total = 0.0
    for columns in _column_patterns(keep):
        f = float(keep[:, columns[0]].sum())
        p = len(keep) - f
        total += p**3 + f * p * p if 2 * p < f else f**3
    return total


def _wald_block_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    keep: np.ndarray,
    *,
    hessian: str = "ggn_exact",
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
    **options: Any,
) -> Update:
    """:func:`solver_update` with each column's score weighted by ``n / M_jj`` (the Wald form)."""
    factors = _factors_of(kernel, stats, "wald_block")
    _, m = output_variance(
        factors, damping=damping, variance_floor=variance_floor, output_damping=output_damping
    )
    with np.errstate(divide="ignore"):
        weight = np.where(m > 0, max(factors.count, 1) / m, np.inf)
    return solver_update(
        kernel, bias, stats, keep, damping=damping, column_weight=weight, **options
    )


def _obs_update(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stats: WeightStatistics,
    keep: np.ndarray,
    **options: Any,
) -> Update:
    return solver_update(kernel, bias, stats, keep, column_weight=0.5, name="obs", **options)


def _wald_block_group(
    thetas: Sequence[np.ndarray],
    stats: Sequence[WeightStatistics | None],
    groupings: Sequence[Grouping],
    *,
    hessian: str = "ggn_exact",
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
    **solver_options: Any,
) -> np.ndarray:
    """``W_g = n theta_g^T Avar_gg^-1 theta_g`` with ``Avar = A^-1 (x) M`` (chi-square, |g| df).

    Groups inside one output unit (units, 1x4 blocks) use ``([A^-1]_RR)^-1 / M_jj``
    over their rows R (a whole unit: ``n theta_j^T A theta_j / M_jj``); groups
    inside one input row (channels of a Dense kernel) use ``M^-1 / [A^-1]_ii``
    with the full output factor.
    """
    kernel = _matrix(thetas[0])
    factors = _factors_of(kernel, stats[0], "wald_block")
    theta = _augment(kernel, thetas[1] if len(thetas) > 1 and factors.has_bias else None)
    if factors.has_bias and theta.shape[0] == kernel.shape[0]:
        theta = _augment(kernel, np.zeros(kernel.shape[1]))
    ids = np.full(theta.shape, -1, np.int64)
    ids[: kernel.shape[0]] = _matrix(groupings[0].ids)
    if len(thetas) > 1 and factors.has_bias:
        ids[-1] = groupings[1].ids
    count = groupings[0].count
    n = max(factors.count, 1)
    a_inv = np.linalg.inv(input_factor(factors, damping))
    m_full, m = output_variance(
        factors, damping=damping, variance_floor=variance_floor, output_damping=output_damping
    )
    scores = np.zeros(count)
    rows_of, cols_of = np.nonzero(ids >= 0)
    members = ids[rows_of, cols_of]
    order = np.argsort(members, kind="stable")
    bounds = np.searchsorted(members[order], np.arange(count + 1))
    inverses: dict[bytes, np.ndarray] = {}
    for g in range(count):
        sel = order[bounds[g] : bounds[g + 1]]
        rows, cols = rows_of[sel], cols_of[sel]
        if np.all(cols == cols[0]):
            key = rows.tobytes()
            if key not in inverses:
                inverses[key] = np.linalg.inv(a_inv[np.ix_(rows, rows)])
            t = theta[rows, cols[0]]
            scores[g] = n * t @ inverses[key] @ t / m[cols[0]]
        elif np.all(rows == rows[0]):
            key = b"row" + cols.tobytes()
            if key not in inverses:
                inverses[key] = np.linalg.inv(m_full[np.ix_(cols, cols)])
            t = theta[rows[0], cols]
            scores[g] = n * t @ inverses[key] @ t / a_inv[rows[0], rows[0]]
        else:
            scores[g] = n * np.sum(theta[rows, cols] ** 2 / (np.diag(a_inv)[rows] * m[cols]))
    return scores


def wald_block(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    hessian: str = "ggn_exact",
    damping: float = DEFAULT_DAMPING,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    output_damping: float | None = None,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
    adaptive: bool = True,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    exact_flops: float = DEFAULT_EXACT_FLOPS,
) -> np.ndarray:
    """Block Wald statistic ``W_ij = n theta_ij^2 / ([A_FF^-1]_ii M_jj)`` (module docstring).

    ``Avar = A^-1 (x) B_H^-1 B_S B_H^-1`` from Kronecker factors: ``A`` the
    layer-input second moment, ``B_H`` the output factor of the GGN (exact for
    softmax cross-entropy by default, ``hessian="ggn"`` samples one label per
    example), ``B_S`` that of the score covariance; F the weights not yet
    pruned. With ``H = Sigma`` this is ``2n`` times the OBS saliency. After
    masking, the blocked solver (:mod:`tfstatprune.criteria.solver`) settles
    the mask per block of ``block_size`` input rows on the updated weights
    (``adaptive``), the score weighted by ``n / M_jj``, and moves the survivors
    to the restricted estimator (OBS update); where solving per output unit
    exactly costs at most ``exact_flops`` (or ``block_size=None``) that is done
    instead, on the mask as decided. ``memory_budget_mb`` bounds one
    layer's factors. A layer without Kronecker factors is scored by
    ``"wald_diag"`` (the diagonal sandwich), without an update.
    Dense kernels, and Conv kernels as ``[K * C_in, C_out]`` matrices with
    KFC factors (:class:`tfstatprune.stats.rules.conv.ConvRule`).

    >>> from tfstatprune.stats import WeightStatistics
    >>> from tfstatprune.stats.kronecker import KroneckerFactors
    >>> f = KroneckerFactors(2, 2 * np.eye(2), 2 * np.eye(1), 2 * np.eye(1), has_bias=False)
    >>> st = WeightStatistics(2, np.zeros((2, 1)), np.ones((2, 1)), kronecker=f)
    >>> wald_block(np.array([[1.0], [3.0]]), st, damping=0.0)
    array([[ 2.],
           [18.]])
    """
    factors = _factors_of(theta, stats, "wald_block")
    matrix = _matrix(theta)
    w = wald_block_scores(
        matrix,
        _bias_row(matrix, factors),
        factors,
        _free_rows(matrix, factors),
        damping=damping,
        variance_floor=variance_floor,
        output_damping=output_damping,
    )
    return w[: matrix.shape[0]].reshape(np.shape(theta))


# The default criterion "wald" is the best Wald estimator a layer allows: this block form
# where the layer has Kronecker factors (Dense, Conv), the diagonal sandwich elsewhere.
# "wald_block" names the same criterion (its name before it became the default).
WALD_NAMES = ("wald", "wald_block")
for _name in WALD_NAMES:
    register_criterion(
        _name,
        statistics=_block_request,
        group=_wald_block_group,
        update=_wald_block_update,
        fallback="wald_diag",
    )(wald_block)


@register_criterion("obs", statistics=_obs_request, update=_obs_update, fallback="obd")
def obs(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    damping: float = DEFAULT_DAMPING,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
    adaptive: bool = True,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    exact_flops: float = DEFAULT_EXACT_FLOPS,
) -> np.ndarray:
    """Optimal Brain Surgeon, layer-wise: ``L_q = theta_q^2 / (2 [H^-1]_qq)``, ``H = A_FF``.

    Hassibi & Stork 1993 as the seed survey writes it (eq. 4: the saliency, and
    the compensation ``dw = -theta_q / [H^-1]_qq H^-1 e_q`` applied after
    pruning), with the Hessian of the layer's output reconstruction error, the
    input second moment ``A = E[a~ a~^T]`` per output unit (Dong et al. 2017).
    Dense and Conv kernels (a Conv filter is a unit over its patches). The
    update and the options ``block_size``, ``adaptive``, ``memory_budget_mb``,
    ``exact_flops`` are those of ``wald_block`` (the blocked solver); a layer without
    Kronecker factors is scored by ``"obd"``.

    >>> from tfstatprune.stats import WeightStatistics
    >>> from tfstatprune.stats.kronecker import KroneckerFactors
    >>> f = KroneckerFactors(1, np.array([[2.0, 0.0], [0.0, 4.0]]), np.eye(1), None, False)
    >>> obs(np.array([[1.0], [1.0]]), WeightStatistics(1, 0, 0, kronecker=f), damping=0.0)
    array([[1.],
           [2.]])
    """
    factors = _factors_of(theta, stats, "obs")
    matrix = _matrix(theta)
    s = obs_scores(
        matrix, _bias_row(matrix, factors), factors, _free_rows(matrix, factors), damping=damping
    )
    return s[: matrix.shape[0]].reshape(np.shape(theta))
