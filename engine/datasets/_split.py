"""Stratified, seeded index selection: the validation split and the train subsample.

Pure numpy, no torch, so it is cheap to test. Both selections keep class
proportions: each class gets its exact share rounded by the largest-remainder
method (so every per-class count is within 1 of proportional and the total is
exact), and every class present gets at least one sample when the total allows.
"""

from __future__ import annotations

import numpy as np


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """How many of `n` picks each class gets, proportional to `counts`.

    Sums to exactly `n` (0 <= n <= counts.sum()); never more than a class has;
    at least 1 for every non-empty class when n >= the number of such classes.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise ValueError(f"cannot pick {n} of {total} samples")
    if n == 0 or total == 0:
        return np.zeros_like(counts)
    quota = counts * (n / total)
    alloc = np.floor(quota).astype(np.int64)
    # Largest remainder first; ties go to the larger class, then the lower index (stable).
    order = np.lexsort((np.arange(len(counts)), -counts, -(quota - alloc)))
    for k in order[: n - int(alloc.sum())]:
        alloc[k] += 1
    present = counts > 0
    if n >= int(present.sum()):
        for k in np.flatnonzero(present & (alloc == 0)):
            # Take the one sample from the class that is most over its quota.
            donors = np.flatnonzero(alloc > 1)
            donor = donors[np.argmax((alloc - quota)[donors])]
            alloc[donor] -= 1
            alloc[k] += 1
    return alloc


def stratified_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` samples of `y`, stratified by class, chosen by `rng`.

    Each class's members are shuffled once and the first `alloc` taken, so for a
    fixed `rng` seed a smaller `n` picks (nearly always) a subset of a larger one.
    """
    y = np.asarray(y)
    labels, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = allocate(counts, n)
    picked = []
    for k in range(len(labels)):
        members = np.flatnonzero(inverse == k)
        picked.append(rng.permutation(members)[: alloc[k]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def random_pick(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` of `total` samples chosen by `rng` (regression targets have no
    classes to stratify by)."""
    return np.sort(rng.permutation(total)[:n])


def split_indices(
    y: np.ndarray, *, val_fraction: float, train_fraction: float, seed: int, stratify: bool = True,
    val_start: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into `y`.

    The validation set is `round(val_fraction * N)` samples (at least 1, leaving at
    least 1) and depends only on `seed` and `val_fraction`, so a sweep over
    `train_fraction` is judged on the same validation set. The training subset is
    `round(train_fraction * remaining)` (at least 1) of the rest. With `val_start`, the
    samples from there on are the validation set as given (an .npz's x_val) and the
    training subset is taken from those before it. `stratify=False` (regression) picks
    uniformly instead of per class.
    """
    y = np.asarray(y)
    total = len(y)

    def pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return stratified_pick(labels, n, rng) if stratify else random_pick(len(labels), n, rng)

    if val_start is not None:
        if not 1 <= val_start < total:
            raise ValueError(f"need at least 1 training and 1 validation sample, got {val_start} and {total - val_start}")
        val_idx = np.arange(val_start, total)
        rest = np.arange(val_start)
    else:
        if total < 2:
            raise ValueError(f"need at least 2 samples to split off a validation set, got {total}")
        n_val = min(max(1, round(val_fraction * total)), total - 1)
        val_idx = pick(y, n_val, np.random.default_rng([seed, 0]))
        rest = np.setdiff1d(np.arange(total), val_idx, assume_unique=True)
    n_train = min(max(1, round(train_fraction * len(rest))), len(rest))
    train_idx = rest[pick(y[rest], n_train, np.random.default_rng([seed, 1]))]
    return train_idx, val_idx
