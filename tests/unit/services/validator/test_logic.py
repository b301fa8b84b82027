"""The gate: absolute thresholds and the fair champion/challenger comparison."""

import numpy as np

from modelstream.contracts.definitions import Definition
from modelstream.learn.linear import LinearModel
from modelstream.services.validator.logic import Champion, Verdict, apply_thresholds, compare


def test_gate_thresholds_and_fair_champion_comparison():
    definition = Definition(
        name="m",
        task="BINARY",
        thresholds={"min_accuracy": 0.9, "max_log_loss": 0.3},
        tolerance=0.01,
    )
    verdict = Verdict("cross-validation", {"accuracy_mean": 0.95, "log_loss_mean": 0.5})
    apply_thresholds(verdict, definition)
    assert verdict.reasons == ["log_loss 0.5000 is above the maximum 0.3"]

    model = LinearModel(
        "BINARY", ["a"], ["0", "1"], np.ones((1, 1)), np.zeros(1), np.zeros(1), np.ones(1)
    )
    champion = Champion(model, 3, {"validation_accuracy_mean": 0.97})
    few_fresh = Verdict("cross-validation", {"accuracy_mean": 0.95})
    compare(few_fresh, "BINARY", definition, champion, {}, {}, fresh=5)
    assert "cross-validation estimates" in few_fresh.comparison and not few_fresh.passed
    enough_fresh = Verdict("cross-validation", {"accuracy_mean": 0.95})
    compare(
        enough_fresh,
        "BINARY",
        definition,
        champion,
        {"accuracy_mean": 0.93},
        {"accuracy_mean": 0.935},
        fresh=200,
    )
    assert enough_fresh.passed and "200 held-out examples" in enough_fresh.comparison
