"""The one-shot solver the block criteria share: masks and OBS updates, SparseGPT-style.

A layer's kernel is the ``[R, O]`` matrix ``theta`` (rows: inputs, a Conv
kernel's patches, the bias row last; columns: output units) with the layer-wise
quadratic ``(theta - theta^)^T A (theta - theta^)`` per column, ``A`` the damped
input second moment (:mod:`tfstatprune.stats.kronecker`). Pruning a set P of a
column and re-fitting the rest is the restricted estimator (the OBS update)
``theta~ = theta^ - V[:, P] V_PP^-1 theta^_P``, ``V = A^-1``: one solve per
output unit with its own P, ``O(O R^3)`` per layer.

The solver instead walks the rows in blocks of ``block_size`` (Frantar &
Alistarh 2023, SparseGPT, Algorithm 1). With one Cholesky factor ``U`` (upper,
``U^T U = A^-1``) per layer, the inverse of ``A`` restricted to the rows from
``k`` on is ``U[k:, k:]^T U[k:, k:]``; a block's rows are decided against the
rows after it, then frozen:

1. the block's mask is chosen on the *current* (already updated) weights by the
   criterion's score ``theta_q^2 / [V_b]_qq`` times a per-column weight
   (``n / M_jj`` for ``wald_block``: the Wald statistic; ``1/2``: OBS), in the
   block's share of the layer's pruned count (adaptive mask selection);
2. per column the block's pruned set P is removed *exactly* against all later
   rows, ``y = V_PP^-1 theta_P`` (a ``|P| x |P|`` solve, batched over columns),
   and the change of every later row is one matrix product
   ``theta[k:] -= U[k:k+B, k:]^T (U_bb y)`` (the lazy batched update).

Cost ``O(R^3 + O R B^2 + O R^2)`` per layer whatever the sparsity. With one
block covering the layer the result is the exact restricted estimator. With
``sequential=True`` each row of the block is removed in turn against the rows
after it (SparseGPT as published: error ``(w_q - 0) / U_qq``, score
``w_q^2 / U_qq^2``); ``obc_prune`` is the exact greedy OBS per column (Frantar
et al. 2022, OBC / ExactOBS).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MEMORY_BUDGET_MB",
    "OBC_MAX_INPUTS",
    "Pruned",
    "block_counts",
    "check_memory",
    "inverse_cholesky",
    "obc_prune",
    "solve_layer",
]

DEFAULT_BLOCK_SIZE = 128
DEFAULT_MEMORY_BUDGET_MB = 2048
OBC_MAX_INPUTS = 1024
OBC_WORKING_SET_MB = 256
_MB = 2**20
_BYTES = 8  # float64
_MATRICES_PER_LAYER = 3  # A, A^-1 and its Cholesky factor


class Pruned(NamedTuple):
    """A layer after the solver: the updated ``[R, O]`` block and its mask (True = kept)."""

    theta: np.ndarray
    keep: np.ndarray


def check_memory(rows: int, columns: int, budget_mb: float, layer: str) -> None:
    """Refuse a layer whose factors do not fit ``budget_mb`` (``3 R^2 + 2 R O`` floats).

    Raises:
      MemoryError: naming the layer, what it needs and the budget.
    """
    need = (_MATRICES_PER_LAYER * rows * rows + 2 * rows * columns) * _BYTES / _MB
    if need > budget_mb:
        raise MemoryError(
            f"layer {layer!r}: the solver needs {need:.0f} MB for its {rows} x {rows} input "
            f"factor and weights, over the budget of {budget_mb:.0f} MB; raise "
            "memory_budget_mb=... or leave this layer out (layers=[...])"
        )


def inverse_cholesky(a: np.ndarray, layer: str = "") -> np.ndarray:
    """Upper-triangular ``U`` with ``U^T U = A^-1`` (SparseGPT's ``Hinv``).

    ``[inv(A[k:, k:])] = U[k:, k:]^T U[k:, k:]`` for every ``k``.

    Raises:
      ValueError: ``A`` is not positive definite (naming the layer and the fix).
    """
    try:
        lower = scipy.linalg.cholesky(a, lower=True)
        lower_inv = scipy.linalg.solve_triangular(lower, np.eye(len(a)), lower=True)
        inverse = lower_inv.T @ lower_inv  # A^-1 = L^-T L^-1
        return scipy.linalg.cholesky(inverse, lower=False)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"layer {layer!r}: the input second moment is not positive definite; "
            "raise damping=... (relative to its mean diagonal)"
        ) from None


def block_counts(
    pruned: np.ndarray, choosable: np.ndarray, block_size: int, uniform: bool
) -> np.ndarray:
    """How many choosable entries each block of rows prunes.

    ``pruned``/``choosable``: ``[R, O]`` bool (the decided mask's pruned entries,
    the entries the solver may decide). Per block: the decided mask's count
    (``uniform=False``), or the layer's rate spread evenly over the choosable
    entries (``uniform=True``, SparseGPT), cumulatively rounded so the total is
    exact.
    """
    rows = len(pruned)
    starts = np.arange(0, rows, block_size)
    chosen = np.add.reduceat((pruned & choosable).sum(1), starts) if rows else starts
    if not uniform:
        return chosen
    per_block = np.add.reduceat(choosable.sum(1), starts)
    total = int(chosen.sum())
    through = np.floor(total * np.cumsum(per_block) / max(per_block.sum(), 1) + 0.5)
    return np.diff(np.concatenate([[0], through])).astype(np.int64)


def _choose(
    score: np.ndarray, candidates: np.ndarray, count: int, protected: np.ndarray
) -> np.ndarray:
    """The ``count`` lowest-scoring candidates (not protected) of a block, as a bool mask."""
    open_ = candidates & ~protected
    flat = np.where(open_, score, np.inf).reshape(-1)
    count = min(int(count), int(open_.sum()))
    chosen = np.zeros(flat.shape, bool)
    if count > 0:
        chosen[np.argsort(flat, kind="stable")[:count]] = True
    return chosen.reshape(score.shape)


def _protected(
    score: np.ndarray, keep: np.ndarray, choosable: np.ndarray, min_keep: np.ndarray | None
) -> np.ndarray:
    """Per column the ``min_keep`` best-scoring kept entries: never pruned (the class guard)."""
    protected = np.zeros(score.shape, bool)
    if min_keep is None:
        return protected
    ranked = np.where(keep & choosable, score, -np.inf)
    order = np.argsort(-ranked, axis=0, kind="stable")
    for j, count in enumerate(np.broadcast_to(min_keep, (score.shape[1],))):
        best = order[: int(count), j]
        protected[best[np.isfinite(ranked[best, j])], j] = True
    return protected


def _remove_exactly(
    w_rest: np.ndarray, u_rows: np.ndarray, prune: np.ndarray, chunk: int
) -> np.ndarray:
    """``w_rest - U_b^T U_bb V_PP^-1 w_P`` per column (P: ``prune``, ``[b, O]``)."""
    b = len(prune)
    u_bb = u_rows[:, :b]
    v_bb = u_bb.T @ u_bb
    eye = np.eye(b)
    columns = np.nonzero(prune.any(0))[0]
    for start in range(0, len(columns), chunk):
        cols = columns[start : start + chunk]
        p = prune[:, cols].T  # [c, b]
        both = p[:, :, None] & p[:, None, :]
        system = np.where(both, v_bb[None], eye[None])
        rhs = np.where(p, w_rest[:b, cols].T, 0.0)
        y = np.linalg.solve(system, rhs[:, :, None])[:, :, 0]  # [c, b], zero off P
        w_rest[:, cols] -= u_rows.T @ (u_bb @ y.T)
    return w_rest


def _remove_sequentially(w_rest: np.ndarray, u_rows: np.ndarray, prune: np.ndarray) -> None:
    """SparseGPT's inner loop: each pruned row in turn, against the rows after it."""
    b = len(prune)
    errors = np.zeros((b, w_rest.shape[1]))
    for q in range(b):
        errors[q] = np.where(prune[q], w_rest[q], 0.0) / u_rows[q, q]
        w_rest[q:b] -= u_rows[q, q:b, None] * errors[q][None, :]
    w_rest[b:] -= u_rows[:, b:].T @ errors


def solve_layer(
    theta: np.ndarray,
    a: np.ndarray,
    keep: np.ndarray,
    *,
    choosable: np.ndarray | None = None,
    column_weight: np.ndarray | float = 1.0,
    min_keep: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    adaptive: bool = True,
    sequential: bool = False,
    uniform: bool = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    layer: str = "",
) -> Pruned:
    """Prune ``theta`` (``[R, O]``) to the counts of ``keep`` and update the survivors.

    Args:
      theta: the unrestricted estimate (float64 copy taken).
      a: the damped ``[R, R]`` input second moment.
      keep: the decided mask (True = kept); its pruned count per block of rows
        is kept exactly (see :func:`block_counts`).
      choosable: entries whose fate the solver may decide (default: all);
        the others keep the decision of ``keep`` (previously pruned weights,
        a bias that is not pruned).
      column_weight: per-column factor of the score ``theta_q^2 / [V_b]_qq``
        (``n / M_jj``: the Wald statistic).
      min_keep: per column, entries never pruned (the best-scoring at the start).
      block_size: rows per block (``>= R``: the exact restricted estimator).
      adaptive: choose each block's mask on the updated weights (else ``keep``).
      sequential: SparseGPT's row-by-row removal inside a block (score
        ``theta_q^2 / U_qq^2``) instead of the exact per-block solve.
      uniform: spread the pruned count evenly over the blocks (SparseGPT).
      memory_budget_mb, layer: see :func:`check_memory`.
    """
    theta = np.array(theta, np.float64)
    keep = np.asarray(keep, bool)
    rows, columns = theta.shape
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    check_memory(rows, columns, memory_budget_mb, layer)
    choosable = np.ones(theta.shape, bool) if choosable is None else np.asarray(choosable, bool)
    weight = np.broadcast_to(np.asarray(column_weight, np.float64), (columns,))
    u = inverse_cholesky(a, layer)
    diagonal = np.sum(u * u, 0)  # [A^-1]_qq: the first block's [V_b]_qq
    with np.errstate(divide="ignore", invalid="ignore"):
        start_score = theta**2 * weight[None, :] / diagonal[:, None]
    protected = _protected(start_score, keep, choosable, min_keep)
    counts = block_counts(~keep, choosable, block_size, uniform)
    new_keep = keep.copy()
    chunk = max(1, int(memory_budget_mb * _MB / (4 * _BYTES * block_size**2)))
    for index, k0 in enumerate(range(0, rows, block_size)):
        k1 = min(k0 + block_size, rows)
        u_rows = u[k0:k1, k0:]
        block = slice(k0, k1)
        if adaptive:
            u_bb = u_rows[:, : k1 - k0]
            denominator = np.diag(u_bb) ** 2 if sequential else np.sum(u_bb * u_bb, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                score = theta[block] ** 2 * weight[None, :] / denominator[:, None]
            score = np.where(np.isfinite(score), score, np.inf)
            fixed = ~choosable[block]
            chosen = _choose(score, choosable[block], counts[index], protected[block])
            new_keep[block] = np.where(fixed, keep[block], ~chosen)
        prune = ~new_keep[block]
        if sequential:
            _remove_sequentially(theta[k0:], u_rows, prune)
        else:
            _remove_exactly(theta[k0:], u_rows, prune, chunk)
        theta[block][prune] = 0.0
    return Pruned(np.where(new_keep, theta, 0.0), new_keep)


def obc_prune(
    theta: np.ndarray,
    a: np.ndarray,
    keep: np.ndarray,
    *,
    choosable: np.ndarray | None = None,
    min_keep: np.ndarray | None = None,
    max_inputs: int = OBC_MAX_INPUTS,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    layer: str = "",
) -> Pruned:
    """Exact greedy OBS per column (OBC / ExactOBS, Frantar, Singh & Alistarh 2022).

    Per output unit, as many weights as ``keep`` prunes in it, one at a time:
    the one with the least ``theta_q^2 / [H_F^-1]_qq`` goes, the survivors move
    by ``-theta_q / [H_F^-1]_qq H_F^-1 e_q`` and ``H_F^-1`` is downdated
    (``H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq``). Entries not ``choosable``
    keep their decision (the pruned ones go first); ``min_keep`` per column
    are never pruned. ``O(O R^3)``: layers above ``max_inputs`` rows are refused.

    Raises:
      ValueError: a layer with more than ``max_inputs`` rows.
    """
    theta = np.array(theta, np.float64)
    keep = np.asarray(keep, bool)
    rows, columns = theta.shape
    if rows > max_inputs:
        raise ValueError(
            f"layer {layer!r}: 'obc' is exact greedy OBS, O(outputs x inputs^3); this layer "
            f"has {rows} inputs, over max_inputs={max_inputs}: use 'sparsegpt' or "
            "'wald_block' (the blocked solver), or raise max_inputs=..."
        )
    check_memory(rows, columns, memory_budget_mb, layer)
    choosable = np.ones(theta.shape, bool) if choosable is None else np.asarray(choosable, bool)
    v = np.linalg.inv(a)
    protected = _protected(theta**2 / np.diag(v)[:, None], keep, choosable, min_keep)
    out_theta, out_keep = np.zeros_like(theta), np.zeros(theta.shape, bool)
    working = min(memory_budget_mb, OBC_WORKING_SET_MB)  # the inverses of a batch of columns
    chunk = max(1, int(working * _MB / (2 * _BYTES * rows * rows)))
    allowed = choosable & ~protected
    todo_all = ~keep & ~choosable  # decided pruned: these go first
    left_all = (~keep & choosable).sum(0)
    for start in range(0, columns, chunk):
        cols = np.arange(start, min(start + chunk, columns))
        state = _ObcColumns(
            cols,
            np.repeat(v[None], len(cols), 0),
            theta[:, cols].T.copy(),
            allowed[:, cols].T.copy(),
            todo_all[:, cols].T.copy(),
            left_all[cols].copy(),
        )
        while state.step():
            pass
        state.write(out_theta, out_keep)
    return Pruned(out_theta, out_keep)


class _ObcColumns:
    """A batch of columns of :func:`obc_prune`, one greedy OBS removal per :meth:`step`.

    Each column holds the inverse ``H_F^-1`` of its free set lazily, as
    ``V - U U^T``: a removal adds ``u = H^-1 e_q / sqrt([H^-1]_qq)`` to ``U``
    and ``u^2`` to the diagonal's downdate (``O(R k)``, not the ``O(R^2)`` of
    an explicit downdate), and every ``LAZY`` removals ``U U^T`` is folded
    into ``V`` as one batched matrix product (SparseGPT's lazy batched update,
    here within a column's greedy sequence). At each fold the pruned entries
    leave the arrays (their row and column of ``H^-1`` are zero), and so do
    the finished columns, once the largest free set has shrunk by a quarter or
    a quarter of the columns are done.
    """

    LAZY = 32

    def __init__(
        self,
        cols: np.ndarray,
        inv: np.ndarray,
        w: np.ndarray,
        allowed: np.ndarray,
        todo: np.ndarray,
        left: np.ndarray,
    ) -> None:
        self.cols, self.inv, self.w = cols, inv, w  # [c], [c, m, m], [c, m]
        self.allowed, self.todo, self.left = allowed, todo, left  # [c, m], [c, m], [c]
        self.free = np.ones(w.shape, bool)
        self.rows = np.broadcast_to(np.arange(w.shape[1]), w.shape).copy()  # layer rows
        self.finished: list[tuple[np.ndarray, ...]] = []  # (cols, rows, w, free) set aside
        self.lazy = np.zeros((*w.shape, self.LAZY))  # U, [c, m, LAZY]
        self.k = 0  # columns of U in use
        self.d = np.einsum("cqq->cq", inv).copy()  # diag(V - U U^T)

    def step(self) -> bool:
        """One removal in every unfinished column; False when all are finished."""
        active = self.todo.any(1) | (self.left > 0)
        if not active.any():
            return False
        if self.k == self.LAZY:
            self._fold(active)
            active = self.todo.any(1) | (self.left > 0)
        w, free, todo, d, lazy = self.w, self.free, self.todo, self.d, self.lazy
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(free & self.allowed, w**2 / d, np.inf)
        pick = np.where(todo.any(1), np.argmax(todo, 1), np.argmin(score, 1))
        c = np.arange(len(pick))
        h = self.inv[c, :, pick] - np.einsum(
            "cmk,ck->cm", lazy[:, :, : self.k], lazy[c, pick, : self.k]
        )  # H^-1 e_q of the current free set
        h_qq = np.where(active, d[c, pick], 1.0)
        h = np.where(active[:, None], h, 0.0)  # a finished column does not move
        w -= (w[c, pick] / h_qq)[:, None] * h
        u = h / np.sqrt(h_qq)[:, None]
        lazy[:, :, self.k] = u
        self.k += 1
        d -= u**2
        ran = c[active]
        q = pick[active]
        w[ran, q] = 0.0
        free[ran, q] = False
        was_forced = todo[ran, q]
        todo[ran, q] = False
        self.left[ran[~was_forced]] -= 1
        d[ran, q] = 1.0  # a pruned entry stays out of every later choice
        return True

    def _fold(self, active: np.ndarray) -> None:
        """``V -= U U^T``; drop the pruned entries and finished columns when it pays."""
        self.inv -= np.matmul(self.lazy, np.swapaxes(self.lazy, 1, 2))
        self.k = 0
        self.lazy[:] = 0.0
        self.inv *= self.free[:, :, None]  # a pruned entry's row and column: exactly 0
        self.inv *= self.free[:, None, :]
        self.d = np.where(self.free, np.einsum("cqq->cq", self.inv), 1.0)
        size = int(self.free[active].sum(1).max(initial=0))
        if (~active).sum() * 4 < len(active) and size * 4 > 3 * (self.free.shape[1] - 8):
            return
        self.finished.append(
            (self.cols[~active], self.rows[~active], self.w[~active], self.free[~active])
        )
        self.cols, self.left, self.inv = self.cols[active], self.left[active], self.inv[active]
        order = np.argsort(~self.free[active], axis=1, kind="stable")[:, :size]  # free first
        self.inv = np.take_along_axis(
            np.take_along_axis(self.inv, order[:, :, None], 1), order[:, None, :], 2
        )
        self.w, self.allowed, self.todo, self.free, self.rows, self.d = (
            np.take_along_axis(a[active], order, 1)
            for a in (self.w, self.allowed, self.todo, self.free, self.rows, self.d)
        )
        self.lazy = np.zeros((*self.w.shape, self.LAZY))

    def write(self, theta: np.ndarray, keep: np.ndarray) -> None:
        """Each column's survivors (their updated values) into ``theta`` and ``keep``."""
        for cols, rows, w, free in [*self.finished, (self.cols, self.rows, self.w, self.free)]:
            for j, r, values, kept in zip(cols, rows, w, free, strict=True):
                theta[r[kept], j] = values[kept]
                keep[r[kept], j] = True
