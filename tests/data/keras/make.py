"""Writes the Keras files the import tests read, with Keras itself (run once, by hand; CI
never installs Keras, JAX or TensorFlow):

    python3 -m venv /tmp/keras-venv
    /tmp/keras-venv/bin/pip install keras==3.15.1 "jax[cpu]==0.10.2" h5py==3.16.0
    KERAS_BACKEND=jax /tmp/keras-venv/bin/python tests/data/keras/make.py

Each model is small, trained a few steps on made-up data so its weights mean something,
saved as .h5 (the legacy HDF5 format) and as .keras (Keras 3's ZIP), with the rows it was
asked about and Keras's own answers in expected.json."""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

HERE = Path(__file__).resolve().parent


def data(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def build() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    models: dict[str, keras.Model] = {}
    # a multiclass classifier of ReLU layers: the native mlp family can express it
    models["relu_softmax"] = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    # a binary classifier with tanh and sigmoid hidden layers: an ONNX graph
    models["tanh_sigmoid"] = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(6, activation="sigmoid"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    # a regression network written with the functional API
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(10, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.1)(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    models["functional_regression"] = keras.Model(inputs, outputs)
    # softmax over two units, as an Activation layer: a binary classifier, native
    models["softmax_pair"] = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2),
            keras.layers.Activation("softmax"),
        ]
    )
    # a linear hidden layer without bias: an ONNX graph
    models["no_bias"] = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, use_bias=False),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    # a Lambda layer: it carries Python bytecode; import refuses it by name
    models["lambda"] = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    return models


def main() -> None:
    expected: dict[str, dict[str, list[list[float]]]] = {}
    for i, (name, model) in enumerate(build().items()):
        d = model.input_shape[-1]
        X = data(64, d, seed=i)
        units = model.output_shape[-1]
        loss = (
            "mse"
            if name.endswith("regression") or name == "lambda"
            else ("binary_crossentropy" if units == 1 else "sparse_categorical_crossentropy")
        )
        if loss == "mse":
            y = X.sum(axis=1, keepdims=True)
        elif loss == "binary_crossentropy":
            y = (X[:, 0] > 0).astype("float32")
        else:
            y = ((X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)) % units
        if name == "lambda":
            y = np.zeros((64, 2), "float32")
        model.compile(optimizer="adam", loss=loss)
        model.fit(X, y, epochs=3, verbose=0)
        model.save(HERE / f"{name}.keras")
        if name != "lambda":
            model.save(HERE / f"{name}.h5")
        else:
            try:
                model.save(HERE / f"{name}.h5")
            except Exception as exc:  # Keras may refuse to write a lambda to HDF5
                print(f"{name}.h5 not written: {exc}", file=sys.stderr)
        rows = data(20, d, seed=100 + i)
        expected[name] = {
            "rows": rows.tolist(),
            "predictions": np.asarray(model.predict(rows, verbose=0), "float64").tolist(),
        }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print("keras", keras.__version__, "backend", keras.backend.backend())


if __name__ == "__main__":
    main()
