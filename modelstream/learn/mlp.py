"""Multilayer perceptrons in numpy: ReLU hidden layers, the task's link on the output
(sigmoid, softmax or identity), trained by mini-batch Adam with a decaying learning rate,
L2 weight decay and early stopping on an inner validation split.

Like the linear grid (sgd.py), a whole grid of L2 strengths trains in one pass: every
parameter carries a leading model axis ``G``, one batched matrix product per layer serves
all models, and every model starts from the same initial weights and sees the same
shuffles, so each equals its own separate run up to BLAS rounding. Deterministic for a
seed: the initial weights, the split and the shuffles all come from
``numpy.random.default_rng(seed)``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 2)); y = (X[:, 0] * X[:, 1] > 0).astype(int)  # XOR: not linear
>>> fit = fit_mlp(X, y, "BINARY", 2, GDConfig(seed=1, hidden=(16,), learning_rate=0.01))
>>> model = MLPModel("BINARY", ["a", "b"], ["0", "1"], fit.layers, np.zeros(2), np.ones(2))
>>> bool((model.proba(X).argmax(axis=1) == y).mean() > 0.9)
True
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from modelstream.contracts.builders import LinearTensors
from modelstream.contracts.records import DenseLayer, ModelBody, Task
from modelstream.errors import ArtifactVerificationError
from modelstream.learn.objectives import EPS, link, sigmoid, softmax
from modelstream.learn.sgd import GDConfig
from modelstream.learn.stopping import EarlyStopping
from modelstream.registry.artifact import from_tensor, to_tensor

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Adam moves every weight by about the step whatever its gradient's scale, so a layer's
# outputs move in proportion to its fan-in: a layer wider than this takes the step scaled
# by (FAN_IN_REFERENCE / fan-in) ** FAN_IN_POWER (784 pixels took 0.01 unscaled and
# trailed scikit-learn by 3 points on Fashion-MNIST). Narrower layers take it unscaled.
FAN_IN_REFERENCE = 64
FAN_IN_POWER = 0.5
Layers = list[tuple[np.ndarray, np.ndarray]]  # (W: inputs × outputs, b: outputs) per layer


@dataclass(frozen=True)
class MLPModel:
    task: Task
    feature_names: list[str]
    classes: list[str]
    layers: Layers
    mean: np.ndarray  # d
    scale: np.ndarray  # d

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def categorical(self) -> list[str]:
        return []

    def logits(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.mean) / self.scale
        for W, b in self.layers[:-1]:
            Z = Z @ W
            Z += b
            np.maximum(Z, 0.0, out=Z)
        W, b = self.layers[-1]
        out: np.ndarray = Z @ W + b
        return out

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n × n_classes); for regression, the predicted values (n)."""
        return link(self.task, self.logits(X))

    def output(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X)

    def score(
        self, X: np.ndarray, categories: object = None, tensor_rows: object = None
    ) -> np.ndarray:
        return self.proba(X)

    @classmethod
    def from_body(cls, body: ModelBody) -> MLPModel:
        """Build from a (decrypted) artifact body, checking that the layers chain."""
        task = Task(body["task"])
        names, classes = list(body["feature_names"]), list(body["classes"])
        records = body["layers"]
        if not records:
            raise ArtifactVerificationError("an mlp artifact needs at least one layer")
        layers = [(from_tensor(r["weights"]), from_tensor(r["biases"])) for r in records]
        mean, scale = from_tensor(body["feature_mean"]), from_tensor(body["feature_scale"])
        width = len(names)
        if mean.shape != (width,) or scale.shape != (width,) or np.any(scale == 0):
            raise ArtifactVerificationError("feature mean/scale do not match the features")
        for i, (W, b) in enumerate(layers):
            if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
                raise ArtifactVerificationError(f"layer {i} has shape {W.shape}, bias {b.shape}")
            width = W.shape[1]
        expected = len(classes) if task == Task.MULTICLASS else 1
        if width != expected:
            raise ArtifactVerificationError(f"{width} outputs for a {task.lower()} model")
        return cls(task, names, classes, layers, mean, scale)

    def tensors(self) -> LinearTensors:
        """The linear fields of the body: empty weights, the standardization statistics."""
        empty = to_tensor(np.empty(0))
        return {
            "weights": empty,
            "intercepts": empty,
            "feature_mean": to_tensor(self.mean),
            "feature_scale": to_tensor(self.scale),
        }

    def layer_records(self) -> list[DenseLayer]:
        return [{"weights": to_tensor(W), "biases": to_tensor(b)} for W, b in self.layers]


@dataclass(frozen=True)
class MLPFit:
    layers: Layers
    epochs_run: int
    best_validation_loss: float


def mlp_config(config: GDConfig, hidden: Sequence[int]) -> GDConfig:
    """What the trainer uses for the mlp family (recorded in each artifact's TrainingConfig,
    so `models reproduce` re-runs exactly this): Adam wants a smaller step than the linear
    family's momentum descent, smaller batches, and more patience."""
    return replace(
        config,
        hidden=tuple(hidden),
        learning_rate=0.01,
        batch_size=64,
        max_epochs=200,
        patience=20,
    )


def fit_mlp(X: np.ndarray, y: np.ndarray, task: Task, n_classes: int, config: GDConfig) -> MLPFit:
    """Fit on standardized ``X``; keeps the parameters of the best validation epoch."""
    return fit_mlp_grid(X, y, task, n_classes, config, (config.l2,))[0]


def initial_layers(sizes: Sequence[int], seed: int) -> Layers:
    """He-normal weights, zero biases: what every model of a grid starts from."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the split and shuffles stay put
    return [
        (rng.normal(0.0, np.sqrt(2.0 / a), size=(a, b)), np.zeros(b))
        for a, b in itertools.pairwise(sizes)
    ]


def forward(
    X: np.ndarray, Ws: list[np.ndarray], bs: list[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden activations per layer (G × n × h) and the output logits (G × n × k) of every
    model of a grid; ``X`` (n × d) is shared."""
    hidden: list[np.ndarray] = []
    A: np.ndarray = X
    for W, b in zip(Ws[:-1], bs[:-1], strict=True):
        Z = A @ W  # (n × d) @ (G × d × h) broadcasts to G × n × h
        Z += b[:, None, :]
        np.maximum(Z, 0.0, out=Z)
        hidden.append(Z)
        A = Z
    out = A @ Ws[-1]
    out += bs[-1][:, None, :]
    return hidden, out


def residual(task: Task, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(mean loss)/d(logits), G × n × k."""
    n = z.shape[1]
    if task == Task.BINARY:
        r = sigmoid(z) - y[None, :, None]
    elif task == Task.MULTICLASS:
        r = softmax(z)
        r[:, np.arange(n), y] -= 1.0
    else:
        r = z - y[None, :, None]
    r /= n
    return r


def losses(task: Task, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean loss of each model, G."""
    if task == Task.BINARY:
        p = sigmoid(z[:, :, 0])
        return -np.mean(y * np.log(p + EPS) + (1 - y) * np.log(1 - p + EPS), axis=1)
    if task == Task.MULTICLASS:
        p = softmax(z)
        return -np.mean(np.log(p[:, np.arange(z.shape[1]), y] + EPS), axis=1)
    r = z[:, :, 0] - y
    return 0.5 * np.mean(r * r, axis=1)


def gradients(
    task: Task,
    X: np.ndarray,
    y: np.ndarray,
    Ws: list[np.ndarray],
    bs: list[np.ndarray],
    l2: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gradients of each model's penalized mean loss (loss + l2_g/2 · Σ||W||², biases not
    penalized) in every weight and bias."""
    hidden, z = forward(X, Ws, bs)
    delta = residual(task, z, y)
    gW: list[np.ndarray] = [np.empty(0)] * len(Ws)
    gb: list[np.ndarray] = [np.empty(0)] * len(Ws)
    for i in range(len(Ws) - 1, -1, -1):
        A = hidden[i - 1] if i > 0 else X
        gW[i] = (np.swapaxes(A, -1, -2) if A.ndim == 3 else A.T) @ delta
        gW[i] += l2[:, None, None] * Ws[i]
        gb[i] = delta.sum(axis=1)
        if i:
            delta = delta @ np.swapaxes(Ws[i], -1, -2)
            delta *= hidden[i - 1] > 0
    return gW, gb


def penalized_losses(
    task: Task,
    X: np.ndarray,
    y: np.ndarray,
    Ws: list[np.ndarray],
    bs: list[np.ndarray],
    l2: np.ndarray,
) -> np.ndarray:
    _, z = forward(X, Ws, bs)
    penalty = sum(np.sum(W * W, axis=(1, 2)) for W in Ws)
    return losses(task, z, y) + 0.5 * l2 * penalty


def fit_mlp_grid(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    n_classes: int,
    config: GDConfig,
    l2_values: tuple[float, ...],
) -> list[MLPFit]:
    """Fit one network per L2 value in a single pass (see the module docstring)."""
    n, d = X.shape
    k = n_classes if task == Task.MULTICLASS else 1
    groups = len(l2_values)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    # a network keeps its split on small data too: stopping early regularizes it
    n_val = round(n * config.validation_fraction) if n >= 20 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    X_train, y_train = X[train_idx], y[train_idx]
    X_val, y_val = X[val_idx], y[val_idx]
    n_train = X_train.shape[0]
    l2 = np.asarray(l2_values, dtype=np.float64)  # of the models still training
    start = initial_layers([d, *config.hidden, k], config.seed)
    # parameters of the alive models only (leading axis); best: every model's, by grid place
    Ws = [np.repeat(W[None], groups, axis=0) for W, _ in start]
    bs = [np.repeat(b[None], groups, axis=0) for _, b in start]
    params = Ws + bs
    first = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    best = [p.copy() for p in params]
    rates = [min(1.0, FAN_IN_REFERENCE / W.shape[1]) ** FAN_IN_POWER for W in Ws] + [1.0] * len(bs)
    stopping = EarlyStopping(groups, config.patience, config.tolerance)
    batch = max(1, min(config.batch_size, n_train))
    beta1, beta2 = ADAM_BETAS
    step = 0
    epoch = 0
    count = len(Ws)
    for epoch in range(1, config.max_epochs + 1):
        lr = config.learning_rate / (1.0 + config.lr_decay * (epoch - 1))
        perm = rng.permutation(n_train)
        Xs, ys = X_train[perm], y_train[perm]
        for at in range(0, n_train, batch):
            gW, gb = gradients(task, Xs[at : at + batch], ys[at : at + batch], Ws, bs, l2)
            step += 1
            correction = np.sqrt(1 - beta2**step) / (1 - beta1**step)
            for p, grad, m_, v_, rate in zip(params, gW + gb, m, v, rates, strict=True):
                m_ *= beta1
                m_ += (1 - beta1) * grad
                v_ *= beta2
                v_ += (1 - beta2) * grad * grad
                p -= (lr * rate * correction) * m_ / (np.sqrt(v_) + ADAM_EPS)
        Xe, ye = (X_val, y_val) if n_val else (X_train, y_train)
        models = stopping.alive
        for i in stopping.update(epoch, penalized_losses(task, Xe, ye, Ws, bs, l2)):
            for b_, p in zip(best, params, strict=True):
                b_[models[i]] = p[i]
        if not stopping.kept.all():  # stopped models leave the pass
            kept = stopping.kept
            params = [p[kept] for p in params]
            m, v = [a[kept] for a in m], [a[kept] for a in v]
            Ws, bs = params[:count], params[count:]
            l2 = l2[kept]
        if not len(stopping.alive):
            break
    stopping.finish(epoch)
    best_loss = stopping.best_loss
    stopped_at = stopping.stopped_at
    fits = []
    for model in range(groups):
        chosen = best if np.isfinite(best_loss[model]) else first
        layers = [(chosen[i][model].copy(), chosen[count + i][model].copy()) for i in range(count)]
        fits.append(MLPFit(layers, int(stopped_at[model]), float(best_loss[model])))
    return fits
