"""Dominance among trials' objective values: the Pareto front, non-dominated ranks, hypervolume.

Values are turned into losses first (a maximised objective negated), so "a
dominates b" is: a's losses are <= b's in every objective and < in one.
Trials with equal values do not dominate each other (both are on the front,
as in Optuna's `study.best_trials`). numpy only: the CLI, the pruner, the TUI
and the benchmarks share these, and none of them needs Optuna for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def losses(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, m) array of losses: each maximised objective negated."""
    arr = np.asarray(values, dtype=float).reshape(-1, len(directions))
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * sign


def front_mask(loss: np.ndarray) -> np.ndarray:
    """True for each row that no other row dominates.

    Rows are visited in lexicographic order, where a row can only be dominated by one visited
    before it, and compared with the front found so far (whatever dominates a row, some front
    row dominates too): about n times the front's size."""
    n = len(loss)
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    if loss.shape[1] == 2:
        return _front_mask_2d(loss)
    order = np.lexsort(loss.T[::-1])
    front: list[int] = []
    front_rows = np.empty((0, loss.shape[1]))
    for i in order:
        row = loss[i]
        if len(front) and np.any(np.all(front_rows <= row, axis=1) & np.any(front_rows < row, axis=1)):
            continue
        front.append(int(i))
        front_rows = loss[front]
    mask[front] = True
    return mask


def _front_mask_2d(loss: np.ndarray) -> np.ndarray:
    """Two objectives in a few array operations. In lexicographic order, a row is dominated by
    an earlier row of smaller first loss whose second loss is at most its own, or by an earlier
    row of the same first loss whose second loss is smaller (the first of its group)."""
    order = np.lexsort((loss[:, 1], loss[:, 0]))
    x, y = loss[order, 0], loss[order, 1]
    new_group = np.r_[True, x[1:] != x[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(x)), 0))
    running = np.minimum.accumulate(y)
    before = np.where(group_start > 0, running[np.maximum(group_start - 1, 0)], np.inf)
    dominated = (before <= y) | (y[group_start] < y)
    mask = np.zeros(len(loss), dtype=bool)
    mask[order] = ~dominated
    return mask


def ranks(loss: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, and so on."""
    out = np.full(len(loss), -1, dtype=int)
    left = np.arange(len(loss))
    rank = 0
    while len(left):
        on = front_mask(loss[left])
        out[left[on]] = rank
        left = left[~on]
        rank += 1
    return out


def dominators(loss: np.ndarray, i: int) -> np.ndarray:
    """Indices of the rows that dominate row i."""
    row = loss[i]
    return np.flatnonzero(np.all(loss <= row, axis=1) & np.any(loss < row, axis=1))


def reference_point(loss: np.ndarray) -> np.ndarray:
    """A point every row dominates: the worst loss of each objective plus a tenth of its range
    (or of its size, for a range of zero)."""
    worst, best = loss.max(axis=0), loss.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    return worst + 0.1 * span


def hypervolume(loss: np.ndarray, ref: np.ndarray) -> float:
    """The volume the rows dominate up to `ref` (rows beyond `ref` in some objective count as
    nothing). Two objectives: a sweep here; more: Optuna's exact WFG."""
    inside = loss[np.all(loss < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    pts = inside[front_mask(inside)]
    if pts.shape[1] == 2:
        pts = pts[np.argsort(pts[:, 0], kind="stable")]
        heights = np.minimum.accumulate(pts[:, 1])
        widths = np.diff(np.append(pts[:, 0], ref[0]))
        return float(np.sum(widths * (ref[1] - heights)))
    from optuna._hypervolume import compute_hypervolume  # deferred: only for three or more objectives

    return float(compute_hypervolume(pts, ref, assume_pareto=True))


def hypervolume_history(loss: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The hypervolume of rows 0..i for each i (rows in trial order); recomputed only when a row
    joins the front so far."""
    out = np.zeros(len(loss))
    front = np.empty((0, loss.shape[1]))
    current = 0.0
    for i, row in enumerate(loss):
        dominated = len(front) and np.any(np.all(front <= row, axis=1))
        if not dominated and np.all(row < ref):
            keep = ~(np.all(row <= front, axis=1) & np.any(row < front, axis=1)) if len(front) else np.ones(0, bool)
            front = np.vstack([front[keep], row])
            current = hypervolume(front, ref)
        out[i] = current
    return out
