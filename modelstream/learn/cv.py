"""K-fold splitters: stratified for classifiers, shuffled for regression; seeded.

>>> import numpy as np
>>> folds = stratified_kfold(np.array([0, 0, 0, 0, 1, 1, 1, 1]), k=2, seed=0)
>>> [np.bincount(np.array([0, 0, 0, 0, 1, 1, 1, 1])[test]).tolist() for _, test in folds]
[[2, 2], [2, 2]]
"""

from __future__ import annotations

import numpy as np

from modelstream.contracts.records import Task

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


def kfold(n: int, k: int, seed: int) -> list[Fold]:
    if k < 2 or k > n:
        raise ValueError(f"k-fold needs 2 <= k <= n (k={k}, n={n})")
    order = np.random.default_rng(seed).permutation(n)
    chunks = np.array_split(order, k)
    return [
        (np.sort(np.concatenate(chunks[:i] + chunks[i + 1 :])), np.sort(chunks[i]))
        for i in range(k)
    ]


def stratified_kfold(y: np.ndarray, k: int, seed: int) -> list[Fold]:
    """Each class is shuffled and dealt round-robin over the folds, so every fold keeps the
    class proportions to within one example per class."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(y), dtype=np.int64)
    offset = 0
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # continue the deal where the previous class stopped
    folds = []
    for i in range(k):
        test = np.flatnonzero(assignment == i)
        if len(test) == 0:
            raise ValueError(f"stratified {k}-fold needs at least {k} examples")
        folds.append((np.flatnonzero(assignment != i), test))
    return folds


def folds_for(task: Task, y: np.ndarray, k: int, seed: int) -> list[Fold]:
    if task == Task.REGRESSION:
        return kfold(len(y), k, seed)
    return stratified_kfold(y, k, seed)
