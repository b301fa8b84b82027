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


def test_a_tensor_candidate_is_judged_on_tensors_and_records_its_score_deciles():
    from modelstream.contracts import tensors
    from modelstream.registry.tensor_model import (
        TensorScorer,
        describe,
        parse_spec,
        tensor_candidate,
    )
    from modelstream.services.validator.logic import Holdout, holdout_verdict, score_reference
    from tests.support.tensor_models import image_graph, png, spec

    graph, W, B = image_graph()
    body = tensor_candidate("img", describe(graph, parse_spec(spec())), created_by="t")
    model = TensorScorer(body)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    rows = [[tensors.from_elements("image", [png(p)])] for p in pixels]
    x = (pixels.astype(np.float32) / 255).transpose(0, 3, 1, 2).reshape(40, -1)
    truth = (x @ W + B).argmax(axis=1)  # labels the model gets right
    y = truth.copy()
    y[:4] = (y[:4] + 1) % 3  # and four it gets wrong
    definition = Definition(name="img", task="MULTICLASS", classes=("a", "b", "c"))
    holdout = Holdout(y, (np.empty((40, 0)), [{}] * 40, rows))
    verdict = holdout_verdict(body, model, holdout, definition, None, np.ones(40, bool))
    assert verdict.passed and verdict.metrics["accuracy_mean"] == 0.9
    scores = model.score(np.empty((40, 0)), None, rows)
    expected = np.percentile(scores.max(axis=1), [10, 50, 90])
    assert [verdict.metrics[f"score_q{q}"] for q in (10, 50, 90)] == list(expected)
    assert score_reference(body["task"], scores) == {
        k: v for k, v in verdict.metrics.items() if k.startswith("score_")
    }


def test_an_embedding_model_is_judged_on_running_over_recent_rows():
    from modelstream.contracts import tensors
    from modelstream.registry.tensor_model import (
        TensorScorer,
        describe,
        parse_spec,
        tensor_candidate,
    )
    from modelstream.services.validator.logic import Holdout, holdout_verdict
    from tests.support.tensor_models import image_graph, png, spec

    graph, _, _ = image_graph()
    text = spec(scores=None, outputs=[{"name": "probs", "graph_output": "probs"}])
    body = tensor_candidate("emb", describe(graph, parse_spec(text)), created_by="t")
    assert body["task"] == "EMBEDDING"
    rows = [[tensors.from_elements("image", [png(np.zeros((8, 8, 3), np.uint8))])]] * 3
    definition = Definition(name="emb", task="EMBEDDING", thresholds={"min_rows": 2})
    verdict = holdout_verdict(
        body,
        TensorScorer(body),
        Holdout(np.zeros(3), (np.empty((3, 0)), [{}] * 3, rows)),
        definition,
        None,
        np.ones(3, bool),
    )
    assert verdict.passed and verdict.method == "holdout-run"
    assert verdict.metrics == {"rows_mean": 3.0, "finite_mean": 1.0}
    empty = Holdout(np.zeros(0), (np.empty((0, 0)), [], []))
    refused = holdout_verdict(body, TensorScorer(body), empty, definition, None, np.ones(0, bool))
    assert not refused.passed and "no example" in refused.reasons[0]
