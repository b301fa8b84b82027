"""Pickled scikit-learn models: opened only on the user's word, converted by skl2onnx, and
served as the original answers (through the scorer the predictor builds); what is not an
estimator, or not convertible, is refused with one line."""

from __future__ import annotations

import csv
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

from modelstream.contracts.records import Task
from modelstream.convert import ConversionError, check, convert
from modelstream.registry.importing import graph_candidate
from modelstream.registry.scoring import kind_of, scorer_for


def candidate(path: Path, **options: Any) -> tuple[Any, Any]:
    converted = convert(path, trust_pickle=True, **options)
    assert converted.graph is not None and converted.network is None
    body = graph_candidate("m", converted.graph, created_by="t")
    return body, converted


def saved(tmp_path: Path, model: Any, name: str = "model.joblib") -> Path:
    path = tmp_path / name
    joblib.dump(model, path)
    return path


def served(body: Any, X: np.ndarray, categories: list[dict[str, str]] | None = None) -> Any:
    return scorer_for(body).score(X, categories or [{}] * len(X))


def test_numeric_models_answer_as_the_original(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    Xd, yd = load_diabetes(return_X_y=True)
    cases = [
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y), X, "onnx"),
        # iris's one-decimal values sit on float32 rounding edges of the tree thresholds
        (RandomForestClassifier(n_estimators=25, random_state=0).fit(X, y), X, "onnx"),
        (LogisticRegression(max_iter=5000).fit(Xb, yb), Xb, "onnx"),
    ]
    for model, rows, kind in cases:
        body, converted = candidate(saved(tmp_path, model))
        assert kind_of(body) == kind
        np.testing.assert_allclose(served(body, rows), model.predict_proba(rows), atol=1e-6)
        assert check(body, converted, 1e-6).rows == 128
    # tree ensembles' regressors run in floats in onnxruntime: the values agree relatively
    regressor = GradientBoostingRegressor(random_state=0).fit(Xd, yd)
    body, _ = candidate(saved(tmp_path, regressor, "gbr.pkl"))
    np.testing.assert_allclose(served(body, Xd), regressor.predict(Xd), rtol=1e-6)


def test_a_text_pipeline_tokenizes_as_scikit_learn(tmp_path: Path) -> None:
    texts = [
        "good movie, loved it",
        "bad film; hated it",
        "a great film",
        "terrible and awful, not good",
        "naïve café, über gut",
        "Москва прекрасна",
    ] * 10
    labels = [1, 0, 1, 0, 1, 1] * 10
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression())
    model.fit(texts, labels)
    body, converted = candidate(saved(tmp_path, model), classes=["negative", "positive"])
    assert body["classes"] == ["negative", "positive"]
    # single letters between words (dropped by scikit-learn's pattern before bigrams form),
    # case, accents, Cyrillic
    probes = ["a good a movie", "BAD FILM", "über gut Café", "Москва a прекрасна", "x y z"]
    answers = served(body, np.empty((len(probes), 0)), [{"text": t} for t in probes])
    np.testing.assert_allclose(answers, model.predict_proba(probes), atol=1e-6)
    assert converted.rows_from.startswith("128 generated rows")


def test_named_columns_are_inputs_checked_on_the_users_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 300),
            "income": rng.normal(5e4, 1e4, 300),
            "city": rng.choice(["paris", "oslo", "rome"], 300),
        }
    )
    y = (frame.age > 40).astype(int) ^ (frame.city == "oslo").astype(int)
    columns = ColumnTransformer(
        [
            ("numbers", StandardScaler(), ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    model = make_pipeline(columns, LogisticRegression()).fit(frame, y)
    path = saved(tmp_path, model)
    with pytest.raises(ConversionError, match="pass --sample FILE"):
        convert(path, trust_pickle=True)
    sample = tmp_path / "sample.csv"
    frame.head(40).to_csv(sample, index=False)
    body, converted = candidate(path, sample=sample)
    assert body["feature_names"] == ["age", "income"]
    assert [i["name"] for i in body["onnx"]["inputs"]] == ["age", "income", "city"]
    assert converted.rows_from == "40 rows of sample.csv"
    rest = frame.iloc[40:]
    answers = served(body, rest[["age", "income"]].to_numpy(), [{"city": c} for c in rest.city])
    np.testing.assert_allclose(answers, model.predict_proba(rest), atol=1e-6)

    short = tmp_path / "short.csv"
    with short.open("w", newline="") as file:
        csv.writer(file).writerows([["age", "city"], [1, "oslo"]])
    with pytest.raises(ConversionError, match=r"lacks \['income'\]"):
        convert(path, trust_pickle=True, sample=short)


def test_a_model_that_strays_from_the_original_is_not_imported(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    body, converted = candidate(saved(tmp_path, model))
    assert check(body, converted, 1e-9).max_difference < 1e-9
    # as if the conversion had lost something on one row: the original answers otherwise
    expected = converted.expected.copy()
    expected[17] = expected[17][::-1]
    strayed = dataclasses.replace(converted, expected=expected)
    with pytest.raises(ConversionError, match=r"strays from the original by .* \(row 17 of 128"):
        check(body, strayed, 1e-5)
    nan = converted.expected.copy()
    nan[3, 0] = np.nan
    with pytest.raises(ConversionError, match="strays from the original by inf"):
        check(body, dataclasses.replace(converted, expected=nan), 1e-5)


def test_the_task_asked_for_must_be_the_estimators(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    path = saved(tmp_path, LogisticRegression(max_iter=500).fit(X, y))
    with pytest.raises(ConversionError, match="holds a multiclass model, not regression"):
        convert(path, trust_pickle=True, task=Task.REGRESSION)


# -- refused -------------------------------------------------------------------------------
class Marker:
    """Unpickling this touches a file: what any pickle can do, and why opening one needs
    the user's word."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_pickle_is_not_opened_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(ConversionError, match="unpickling runs whatever code it names"):
        convert(path)
    assert not marker.exists()
    with pytest.raises(ConversionError, match=r"holds a builtins\.NoneType, not a scikit-learn"):
        convert(path, trust_pickle=True)
    assert marker.exists()  # the user said so: it ran, and nothing came of it


class Unconvertible(ClassifierMixin, BaseEstimator):
    """A classifier skl2onnx has no converter for."""

    def fit(self, X: Any, y: Any) -> Unconvertible:
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


def test_what_is_not_a_servable_estimator_gets_one_line(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps(RandomForestClassifier(n_estimators=3).fit(X, y))[:300])
    cases = [
        (saved(tmp_path, {"weights": [1, 2]}, "dict.pkl"), r"holds a builtins\.dict, not a"),
        (truncated, "does not unpickle: UnpicklingError"),
        (saved(tmp_path, StandardScaler().fit(X), "scaler.pkl"), "a transformer alone"),
        (saved(tmp_path, LogisticRegression(), "unfitted.pkl"), "unfitted LogisticRegression"),
        (saved(tmp_path, LinearSVC().fit(X, y), "svc.pkl"), "without predict_proba"),
        (
            saved(tmp_path, make_pipeline(StandardScaler(), Unconvertible()).fit(X, y), "u.pkl"),
            r"skl2onnx cannot convert this Pipeline\(StandardScaler, Unconvertible\)",
        ),
    ]
    for path, message in cases:
        with pytest.raises(ConversionError, match=message) as refused:
            convert(path, trust_pickle=True)
        assert "\n" not in str(refused.value)


def test_mutated_pickles_are_converted_or_refused_never_crash(tmp_path: Path) -> None:
    """A corrupted file (bytes overwritten anywhere) of a trusted pickle: converted, or
    refused with one line, whatever the unpickler or the estimator raises."""
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    original = pickle.dumps(model)
    rng = np.random.default_rng(3)
    path = tmp_path / "model.pkl"
    outcomes = {"converted": 0, "refused": 0}
    for _ in range(100):
        mutated = bytearray(original)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
        path.write_bytes(bytes(mutated))
        try:
            convert(path, trust_pickle=True)
        except ConversionError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        else:
            outcomes["converted"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 100
