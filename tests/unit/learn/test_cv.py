"""The k-fold splitters."""

import numpy as np
import pytest

from modelstream.learn.cv import kfold, stratified_kfold


def test_stratified_kfold_partitions_and_keeps_proportions():
    y = np.array([0] * 50 + [1] * 30 + [2] * 7)
    folds = stratified_kfold(y, 5, seed=1)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests) == list(range(len(y)))
    for train_idx, test_idx in folds:
        assert not set(train_idx) & set(test_idx)
        counts = np.bincount(y[test_idx], minlength=3)
        assert list(counts[:2]) == [10, 6] and counts[2] in (1, 2)
    assert [list(t) for _, t in folds] == [list(t) for _, t in stratified_kfold(y, 5, seed=1)]
    with pytest.raises(ValueError):
        kfold(3, 5, seed=0)
