"""LightGBM trees as a trainer family: deterministic to the byte, searched by k-fold CV."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort

from modelstream.learn.gbdt import GBDTParams, fit_gbdt
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig

SCRIPT = """
import hashlib, numpy as np
from modelstream.learn.gbdt import GBDTParams, fit_gbdt
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 4)); y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
model = fit_gbdt(X, y, "BINARY", list("abcd"), ["0", "1"], GBDTParams(0.1, 7, 5, seed=3))
print(hashlib.sha256(model.to_onnx("m")).hexdigest())
"""


def test_the_onnx_graph_is_the_same_bytes_in_every_process():
    """onnxmltools orders opset imports by a set (the string hash seed) and names the graph
    with a uuid; both are fixed, so `models reproduce` can compare digests."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in (1, 2, 3)
    }
    assert len(digests) == 1


def test_trees_learn_a_non_linear_boundary_and_export_equal_scores():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    y = ((X[:, 0] ** 2 + X[:, 1] ** 2) < 1).astype(int)  # a disc: no line separates it
    model = fit_gbdt(X, y, "BINARY", ["a", "b", "c"], ["0", "1"], GBDTParams(1e-3, 7, 5, 0))
    assert (model.proba(X).argmax(axis=1) == y).mean() > 0.97
    session = ort.InferenceSession(model.to_onnx("disc"), providers=["CPUExecutionProvider"])
    _, probabilities = session.run(None, {"features": X.astype(np.float32)})
    np.testing.assert_allclose(probabilities, model.proba(X), atol=1e-5)


def test_cv_prefers_the_regularized_trees_on_noise():
    """Labels independent of the features: what generalizes is the most regularized,
    simplest ensemble, and the search must say so (ties go to regularization)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    y = rng.integers(0, 2, size=300)
    clean = rng.normal(size=(300, 5))
    signal = (clean[:, 0] > 0).astype(int)
    config = GDConfig(family="gbdt", seed=0)
    noisy = train(X, y, "BINARY", list("abcde"), ["0", "1"], config, (1e-3, 100.0), 3)
    learnable = train(clean, signal, "BINARY", list("abcde"), ["0", "1"], config, (1e-3, 100.0), 3)
    assert learnable.metrics["cv_primary"] > 0.95 > 0.65 > noisy.metrics["cv_primary"]
    assert len(noisy.l2_grid_scores) == 2
