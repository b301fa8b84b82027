"""The multilayer perceptron: gradients, the L2 search, determinism, the artifact, export."""

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact
from modelstream.learn.mlp import MLPModel, gradients, initial_layers, penalized_losses
from modelstream.learn.procedure import search_l2, train
from modelstream.learn.sgd import GDConfig
from modelstream.registry.artifact import decrypt_tensors, encrypt_tensors, seal, verify_bytes
from modelstream.registry.onnx_interop import export_onnx
from modelstream.registry.scoring import scorer_for
from modelstream.registry.trained import trained_candidate

RNG = np.random.default_rng(3)


def _problem(task: str, n: int = 40, d: int = 5):
    X = RNG.normal(size=(n, d))
    if task == "REGRESSION":
        return X, X @ RNG.normal(size=d) + 0.1 * RNG.normal(size=n), 1
    if task == "BINARY":
        return X, (X[:, 0] * X[:, 1] > 0).astype(int), 1
    return X, RNG.integers(0, 3, size=n), 3


@pytest.mark.parametrize("task", ["BINARY", "MULTICLASS", "REGRESSION"])
def test_gradients_match_finite_differences(task):
    X, y, k = _problem(task)
    start = initial_layers([X.shape[1], 7, 4, k], seed=1)
    Ws = [W[None].copy() for W, _ in start]
    bs = [RNG.normal(size=b.shape)[None] * 0.1 for _, b in start]
    l2 = np.array([0.03])
    gW, gb = gradients(task, X, y, Ws, bs, l2)
    h = 1e-6
    for params, grads in ((Ws, gW), (bs, gb)):
        for p, g in zip(params, grads, strict=True):
            for index in [tuple(RNG.integers(0, s) for s in p.shape) for _ in range(6)]:
                saved = p[index]
                p[index] = saved + h
                up = penalized_losses(task, X, y, Ws, bs, l2)[0]
                p[index] = saved - h
                down = penalized_losses(task, X, y, Ws, bs, l2)[0]
                p[index] = saved
                assert g[index] == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-7)


def test_the_l2_search_finds_the_known_answer():
    """A huge penalty flattens the network to a constant; a small one learns XOR."""
    X = RNG.normal(size=(300, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    config = GDConfig(seed=0, hidden=(16,), learning_rate=0.01, max_epochs=150, patience=30)
    search = search_l2(X, y, "BINARY", 2, config, (1e-4, 1e2), 3)
    assert search.l2 <= 1e-4 and search.scores[0] > 0.85 > search.scores[1]
    # the weak edge won: a step beyond it tried, then half-way from the winner to 1e-4
    assert search.tried[:3] == pytest.approx((1e-10, 1e-7, 1e-4)) and search.tried[-1] == 1e2


def _digits_mlp(seed: int = 0):
    digits = load_digits()
    X, y = digits.data[:600].astype(np.float64), digits.target[:600]
    config = GDConfig(
        seed=seed, hidden=(32,), learning_rate=0.01, batch_size=64, max_epochs=40, patience=10
    )
    names = [f"pixel_{i}" for i in range(64)]
    classes = [str(c) for c in range(10)]
    return X, train(X, y, "MULTICLASS", names, classes, config, (1e-4, 1e-2), 3)


def test_training_is_deterministic_to_the_byte():
    _, first = _digits_mlp()
    _, again = _digits_mlp()
    bodies = [
        trained_candidate("digits", t, [], 600, None, created_at_ms=1) for t in (first, again)
    ]
    digests = [seal(b)["digest"] for b in bodies]
    assert digests[0] == digests[1]
    _, other = _digits_mlp(seed=1)
    assert (
        seal(trained_candidate("digits", other, [], 600, None, created_at_ms=1))["digest"]
        != (digests[0])
    )


def test_artifact_round_trip_encryption_scoring_and_onnx_export():
    X, trained = _digits_mlp()
    assert isinstance(trained.model, MLPModel)
    assert (trained.model.proba(X).argmax(axis=1) == load_digits().target[:600]).mean() > 0.95
    body = trained_candidate("digits", trained, [], 600, None, created_at_ms=1)
    assert body["layers"] and body["training"]["hidden"] == [32]
    assert body["training"]["algorithm"] == "minibatch-adam"
    data = default_codec().encode(ModelArtifact, seal(body))
    verified = verify_bytes(data, None, allow_unsigned=True)
    scorer = scorer_for(verified.body)
    np.testing.assert_allclose(scorer.score(X), trained.model.proba(X), atol=1e-12)
    key = bytes(range(32))
    sealed = encrypt_tensors(verified.body, key, "k")
    assert sealed["layers"][0]["weights"]["data"] != body["layers"][0]["weights"]["data"]
    np.testing.assert_allclose(
        scorer_for(decrypt_tensors(sealed, key)).score(X), trained.model.proba(X), atol=1e-12
    )
    graph = export_onnx(trained.model, name="digits", version=1, digest="ab")
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"features": X.astype(np.float32)})
    np.testing.assert_allclose(probabilities, trained.model.proba(X), atol=1e-5)


@pytest.mark.parametrize("task", ["BINARY", "MULTICLASS", "REGRESSION"])
def test_a_grid_model_equals_its_own_run_after_others_stopped_early(task):
    """Models that stop leave the batched pass; the others go on as if alone."""
    from modelstream.learn.mlp import fit_mlp, fit_mlp_grid

    X, y, k = _problem(task, n=120)
    config = GDConfig(hidden=(8,), learning_rate=0.05, max_epochs=150, patience=3, seed=2)
    grid = (1e-4, 0.3, 3.0)
    fits = fit_mlp_grid(X, y, task, 3 if k == 3 else 2, config, grid)
    assert len({f.epochs_run for f in fits}) > 1  # they stopped at different epochs
    for l2, fit in zip(grid, fits, strict=True):
        alone = fit_mlp(X, y, task, 3 if k == 3 else 2, config.with_l2(l2))
        assert fit.epochs_run == alone.epochs_run
        for (W, b), (W1, b1) in zip(fit.layers, alone.layers, strict=True):
            np.testing.assert_allclose(W, W1, atol=1e-9)
            np.testing.assert_allclose(b, b1, atol=1e-9)
