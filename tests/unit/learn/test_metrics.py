"""Evaluation metrics against scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from modelstream.learn.metrics import log_loss, macro_f1, roc_auc

RNG = np.random.default_rng(42)


def test_metrics_match_scikit_learn():
    y = RNG.integers(0, 2, size=200)
    score = np.clip(y * 0.3 + RNG.random(200) * 0.7, 0, 1)
    score[:20] = 0.5  # ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    y3 = RNG.integers(0, 3, size=200)
    proba = RNG.dirichlet(np.ones(3), size=200)
    assert macro_f1(y3, proba) == pytest.approx(f1_score(y3, proba.argmax(1), average="macro"))
    assert log_loss(y3, proba) == pytest.approx(sk_log_loss(y3, proba))
