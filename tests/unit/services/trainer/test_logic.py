import math

import numpy as np
import pytest

from modelstream.contracts.definitions import Definition
from modelstream.errors import InvalidEventError
from modelstream.learn.sgd import GDConfig
from modelstream.services.trainer.logic import TrainerLogic


def example(x, label, model="m"):
    return {"model": model, "features": {"a": x[0], "b": x[1]}, "label": label}


def logic_with(definition):
    logic = TrainerLogic(GDConfig(max_epochs=50))
    logic.define(definition)
    return logic


def test_feature_names_and_classes_are_inferred_then_fixed():
    logic = logic_with(Definition(name="m", task="BINARY", min_examples=10))
    rng = np.random.default_rng(0)
    for i in range(40):
        x = rng.normal(size=2)
        logic.accept(example(x, "yes" if x.sum() > 0 else "no"), partition=1, offset=100 + i)
    assert logic.windows["m"].definition.feature_names == ("a", "b")
    with pytest.raises(InvalidEventError) as missing:
        logic.accept({"model": "m", "features": {"a": 1.0}, "label": "no"}, 1, 200)
    assert missing.value.reason == "missing-features"
    candidate = logic.build_candidate("m", "t.training", parent_version=None)
    assert candidate.inferred is not None and candidate.inferred.classes == ("no", "yes")
    assert candidate.body["lineage"]["ranges"] == [
        {"topic": "t.training", "partition": 1, "start": 100, "end": 140}
    ]
    assert candidate.body["lineage"]["example_count"] == 40
    assert candidate.body["version"] == 0 and candidate.body["stage"] == "CANDIDATE"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"model": "other", "features": {"a": 1.0, "b": 2.0}, "label": "0"}, "unknown-model"),
        (
            {"model": "m", "features": {"a": 1.0, "b": 2.0, "c": 3.0}, "label": "0"},
            "extra-features",
        ),
        ({"model": "m", "features": {"a": math.nan, "b": 2.0}, "label": "0"}, "non-finite"),
        ({"model": "m", "features": {"a": math.inf, "b": 2.0}, "label": "0"}, "non-finite"),
        ({"model": "m", "features": {"a": 1.0, "b": 2.0}, "label": "7"}, "unknown-class"),
        ({"model": "m", "features": {"a": 1.0, "b": 2.0}, "label": 0.5}, "wrong-label-type"),
        ({"model": "m", "features": [1.0, 2.0, 3.0], "label": "0"}, "wrong-feature-count"),
        ({"model": "m", "features": b"\0" * 9, "label": "0"}, "wrong-feature-count"),
    ],
)
def test_bad_examples_are_refused_with_a_reason(record, reason):
    logic = logic_with(
        Definition(name="m", task="BINARY", feature_names=("a", "b"), classes=("0", "1"))
    )
    with pytest.raises(InvalidEventError) as err:
        logic.accept(record, 0, 0)
    assert err.value.reason == reason
    assert len(logic.windows["m"].examples) == 0


def test_packed_list_and_integral_number_labels_are_accepted():
    logic = logic_with(
        Definition(name="m", task="MULTICLASS", feature_names=("a", "b"), classes=("1", "2", "3"))
    )
    logic.accept({"model": "m", "features": [1.0, 2.0], "label": 2.0}, 0, 0)
    logic.accept({"model": "m", "features": np.array([3.0, 4.0]).tobytes(), "label": "3"}, 0, 1)
    window = list(logic.windows["m"].examples)
    assert [e.label for e in window] == ["2", "3"]
    assert window[1].x.tolist() == [3.0, 4.0]


def test_retrain_policy_and_window_bound():
    logic = logic_with(
        Definition(
            name="m",
            task="REGRESSION",
            feature_names=("a", "b"),
            retrain_every=5,
            min_examples=8,
            window_size=10,
        )
    )
    for i in range(7):
        logic.accept({"model": "m", "features": [i, 1.0], "label": float(i)}, 0, i)
    assert logic.due_models() == []  # 7 new, but below min_examples
    logic.accept({"model": "m", "features": [8, 1.0], "label": 8.0}, 0, 8)
    assert logic.due_models() == ["m"]
    logic.trained("m")
    for i in range(9, 20):
        logic.accept({"model": "m", "features": [i, 1.0], "label": float(i)}, 0, i)
    assert len(logic.windows["m"].examples) == 10  # bounded
    assert logic.windows["m"].examples[0].offset == 10
