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


def test_classifiers_are_also_judged_on_macro_f1_and_calibration():
    from modelstream.learn.metrics import evaluate

    # top scores 0.9, 0.9 (one right) and 0.6, 0.6 (both right): |0.5 - 0.9| and |1 - 0.6|
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])
    metrics = evaluate("BINARY", y, proba)
    assert metrics["calibration_error"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, proba.argmax(1), average="macro"))
    # scores drawn from the labels' own distribution are calibrated: a small error
    p = RNG.random(20_000)
    drawn = (RNG.random(20_000) < p).astype(int)
    calibrated = evaluate("BINARY", drawn, np.column_stack((1 - p, p)))
    assert calibrated["calibration_error"] < 0.02
