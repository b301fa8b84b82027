"""scikit-learn estimators and pipelines saved with pickle or joblib, converted to ONNX by
skl2onnx on the user's machine.

Unpickling runs whatever code the file names, so a pickle is opened only when the user
says they trust it (``--trust-pickle``), only here, and only the converted graph leaves:
no service and no topic ever sees pickle bytes.

Three input shapes are understood: a matrix of numbers (one ``features`` input), a column
of text when the first step is a Count or TF-IDF vectorizer (one ``text`` input of
strings), and named columns when the first step is a ColumnTransformer (one input per
column, strings where an encoder learned string categories). The original answers sample
rows (``--sample``, else rows drawn from what the estimator learned) for the check.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelstream.contracts.records import Task
from modelstream.convert import ConversionError, Converted, Row

# scikit-learn's default token pattern, and the same tokens in RE2 (what onnxruntime's
# Tokenizer speaks): runs of two or more letters, digits or underscores, which is what
# Python's \w means on str. skl2onnx's own translation is ASCII-only.
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
RE2_TOKEN_PATTERN = r"[\p{L}\p{N}_]{2,}"
# skl2onnx's default lower-casing locale is en_US, which slim machines lack.
LOCALE = "C.UTF-8"
SAMPLE_ROWS = 128
MAX_SAMPLE_ROWS = 10_000
OPSETS = {"": 17, "ai.onnx.ml": 3}
# Hand-written texts for the check of a text pipeline, beside ones drawn from its vocabulary:
# case, punctuation, digits, accents, scripts, emoji.
TEXTS = [
    "Hello, World!",
    "THE QUICK BROWN FOX jumps over the lazy dog.",
    "naïve café ÜBER straße",
    "Москва и Санкт-Петербург",
    "東京 is a city 🙂",
    "numbers 123 4567 and under_scores",
    "  spaced   out\ttext\n",
]


@dataclass(frozen=True)
class _Shape:
    """How the estimator takes its input."""

    kind: str  # "matrix", "text" or "columns"
    names: list[str]  # the features, by what the request carries
    strings: frozenset[str]  # the columns of strings (kind "columns")


def convert(
    path: Path,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
    trust: bool = False,
    sample: Path | None = None,
) -> Converted:
    """The estimator in the pickle at ``path`` as an ONNX graph whose metadata names its
    features, classes and task, with sample rows and the estimator's answers to them."""
    estimator = _load(path, trust)
    wanted = task
    task, labels = _task(estimator, path.name, classes)
    if wanted is not None and wanted != task:
        raise ConversionError(f"{path.name} holds a {task.lower()} model, not {wanted.lower()}")
    shape = _shape(estimator, features)
    if sample is not None:
        rows = _read_sample(sample, shape)
        rows_from = f"{len(rows)} rows of {sample.name}"
    else:
        rows = _generated_rows(estimator, shape)
        rows_from = f"{len(rows)} generated rows (--sample FILE checks on yours)"
    expected = _answers(estimator, shape, rows, task)
    graph = _to_onnx(estimator, shape, task)
    _set_metadata(graph, shape, labels, task)
    return Converted(
        source="pickle",
        reference=(
            "the original's predict" if task == Task.REGRESSION else "the original's predict_proba"
        ),
        graph=graph.SerializeToString(),
        network=None,
        rows=rows,
        expected=expected,
        rows_from=rows_from,
        keep_graph=False,
    )


# -- opening -----------------------------------------------------------------------------
def _load(path: Path, trust: bool) -> Any:
    if not trust:
        raise ConversionError(
            f"{path.name} is a pickle: unpickling runs whatever code it names, so it is "
            "opened only with --trust-pickle (for a file you made, or trust who did)"
        )
    try:
        import joblib  # reads plain pickles too, and its own memory-mapped arrays
    except ImportError:
        joblib = None
    try:
        if joblib is not None:
            return joblib.load(path)
        with path.open("rb") as file:
            return pickle.load(file)
    except Exception as exc:  # unpickling raises whatever the named code raises
        raise ConversionError(
            f"{path.name} does not unpickle: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def _task(estimator: Any, where: str, classes: Sequence[str] | None) -> tuple[Task, list[str]]:
    from sklearn.base import BaseEstimator, is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    kind = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if not isinstance(estimator, BaseEstimator):
        raise ConversionError(
            f"{where} holds a {kind[:120]}, not a scikit-learn estimator or pipeline"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise ConversionError(f"{where} holds an unfitted {type(estimator).__name__}") from None
    except TypeError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    if is_regressor(estimator):
        if classes:
            raise ConversionError("--classes given for a regressor")
        return Task.REGRESSION, []
    if not is_classifier(estimator):
        raise ConversionError(
            f"{where} holds a {type(estimator).__name__}: a classifier or a regressor (or a "
            "pipeline ending in one) is served, not a transformer alone"
        )
    if not hasattr(estimator, "predict_proba"):
        raise ConversionError(
            f"{where} holds a {type(estimator).__name__} without predict_proba: modelstream "
            "serves class probabilities (wrap it in CalibratedClassifierCV)"
        )
    learned = [str(c) for c in estimator.classes_]
    labels = list(classes) if classes else learned
    if len(labels) != len(learned):
        raise ConversionError(f"{len(labels)} class labels for {len(learned)} classes")
    return (Task.BINARY if len(labels) == 2 else Task.MULTICLASS), labels


def _first_step(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    return estimator


def _last_step(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def _shape(estimator: Any, features: Sequence[str] | None) -> _Shape:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer

    first = _first_step(estimator)
    if isinstance(first, CountVectorizer):  # TfidfVectorizer is one
        if first.analyzer != "word" or first.tokenizer is not None or first.preprocessor:
            raise ConversionError(
                f"the {type(first).__name__} uses its own analyzer, tokenizer or "
                "preprocessor (Python code): only its word pattern converts"
            )
        names = list(features) if features else ["text"]
        if len(names) != 1:
            raise ConversionError("a text pipeline takes one feature: the text")
        return _Shape("text", names, frozenset(names))
    learned = getattr(estimator, "feature_names_in_", None)
    if isinstance(first, ColumnTransformer):
        if learned is None:
            raise ConversionError(
                "the ColumnTransformer selects columns by position: fit it on named columns "
                "(a DataFrame) so each column becomes a named input"
            )
        if features:
            raise ConversionError("--features renames nothing here: the columns are named")
        names = [str(n) for n in learned]
        return _Shape("columns", names, frozenset(_string_columns(first, names)))
    width = int(getattr(estimator, "n_features_in_", 0))
    if width <= 0:
        raise ConversionError(f"{type(first).__name__} does not say how many features it takes")
    if features:
        names = list(features)
    elif learned is not None:
        names = [str(n) for n in learned]
    else:
        names = [f"f{i}" for i in range(width)]
    if len(names) != width:
        raise ConversionError(f"{len(names)} feature names for {width} features")
    return _Shape("matrix", names, frozenset())


def _string_columns(transformer: Any, names: list[str]) -> set[str]:
    """The columns an encoder learned string categories for: string inputs of the graph."""
    from sklearn.pipeline import Pipeline

    strings: set[str] = set()
    for _, step, columns in transformer.transformers_:
        first = step.steps[0][1] if isinstance(step, Pipeline) else step
        if isinstance(columns, str):
            columns = [columns]
        chosen = [names[c] if isinstance(c, (int, np.integer)) else str(c) for c in columns]
        categories = getattr(first, "categories_", None)
        if categories is not None and any(np.asarray(c).dtype.kind in "OUS" for c in categories):
            strings.update(chosen)
    return strings


# -- sample rows and the original's answers ------------------------------------------------
def _read_sample(path: Path, shape: _Shape) -> list[Row]:
    """Rows to check on: a .txt of texts (one per line) for a text pipeline, else a .csv
    whose header names the features or a .jsonl of objects keyed by them."""
    try:
        with path.open(encoding="utf-8", newline="") as file:
            if shape.kind == "text":
                lines = [line.rstrip("\r\n") for line in file if line.strip()]
                rows: list[Row] = [{shape.names[0]: line} for line in lines]
            elif path.suffix == ".jsonl":
                rows = [_row(json.loads(line), shape) for line in file if line.strip()]
            else:
                rows = [_row(record, shape) for record in csv.DictReader(file)]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise ConversionError(f"the sample {path.name} does not read: {exc}") from None
    if not rows:
        raise ConversionError(f"the sample {path.name} has no rows")
    return rows[:MAX_SAMPLE_ROWS]


def _row(record: Any, shape: _Shape) -> Row:
    if not isinstance(record, dict):
        raise ValueError("a sample row is not an object")
    missing = [n for n in shape.names if record.get(n) in (None, "")]
    if missing:
        raise ValueError(f"a sample row lacks {missing[:5]}")
    return {n: str(record[n]) if n in shape.strings else float(record[n]) for n in shape.names}


def _generated_rows(estimator: Any, shape: _Shape) -> list[Row]:
    """Rows drawn from what the estimator learned: texts of its vocabulary's words, numbers
    around a leading scaler's statistics (else unit normal, and five times wider)."""
    rng = np.random.default_rng(0)
    if shape.kind == "columns":
        raise ConversionError(
            "a pipeline over named columns is checked on rows of yours: pass --sample FILE "
            "(.csv or .jsonl with those columns)"
        )
    if shape.kind == "text":
        vocabulary = getattr(_first_step(estimator), "vocabulary_", {}) or {}
        words = sorted({w for term in vocabulary for w in str(term).split()}) or ["word"]
        drawn = [
            " ".join(str(w) for w in rng.choice(words, size=int(rng.integers(1, 13))))
            for _ in range(SAMPLE_ROWS - len(TEXTS))
        ]
        # some shouted, some with punctuation: what the lower-casing and tokens must handle
        drawn = [
            t.upper() if i % 5 == 0 else t + "!" if i % 7 == 0 else t for i, t in enumerate(drawn)
        ]
        return [{shape.names[0]: text} for text in TEXTS + drawn]
    first = _first_step(estimator)
    d = len(shape.names)
    mean = np.asarray(getattr(first, "mean_", np.zeros(d)), dtype=np.float64)
    scale = np.asarray(getattr(first, "scale_", np.ones(d)), dtype=np.float64)
    if mean.shape != (d,) or scale.shape != (d,):
        mean, scale = np.zeros(d), np.ones(d)
    half = SAMPLE_ROWS // 2
    X = mean + scale * np.vstack([rng.normal(size=(half, d)), 5 * rng.normal(size=(half, d))])
    return [dict(zip(shape.names, map(float, x), strict=True)) for x in X]


def _original_input(shape: _Shape, rows: list[Row]) -> Any:
    if shape.kind == "text":
        return [str(row[shape.names[0]]) for row in rows]
    if shape.kind == "columns":
        import pandas as pd  # a pipeline fitted on a DataFrame came with pandas

        return pd.DataFrame({n: [row[n] for row in rows] for n in shape.names})
    return np.array([[float(row[n]) for n in shape.names] for row in rows], dtype=np.float64)


def _answers(estimator: Any, shape: _Shape, rows: list[Row], task: Task) -> np.ndarray:
    given = _original_input(shape, rows)
    try:
        if task == Task.REGRESSION:
            values = np.asarray(estimator.predict(given), dtype=np.float64)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ConversionError(f"the regressor gives {values.shape[1]} outputs: one only")
            return values
        return np.asarray(estimator.predict_proba(given), dtype=np.float64)
    except ConversionError:
        raise
    except Exception as exc:  # the estimator's own complaint about the rows
        raise ConversionError(
            f"the original does not answer the sample rows: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


# -- conversion ------------------------------------------------------------------------------
def _to_onnx(estimator: Any, shape: _Shape, task: Task) -> Any:
    """skl2onnx's graph: doubles where the converters take them (no float32 rounding of the
    inputs), floats otherwise; text lower-cased and tokenized as scikit-learn does."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import (
            DoubleTensorType,
            FloatTensorType,
            StringTensorType,
        )
    except ImportError:
        raise ConversionError(
            "converting a pickle needs skl2onnx: pip install 'modelstream[convert]'"
        ) from None
    from modelstream.registry.onnx_model import inference_session

    options: dict[int, dict[str, Any]] = {}
    if task != Task.REGRESSION:
        options[id(_last_step(estimator))] = {"zipmap": False}
    first = _first_step(estimator)
    if shape.kind == "text":
        text_options: dict[str, Any] = {"locale": LOCALE}
        if first.token_pattern == SKLEARN_TOKEN_PATTERN:
            text_options["tokenexp"] = RE2_TOKEN_PATTERN
        options[id(first)] = text_options
        attempts = [[(shape.names[0], StringTensorType([None, 1]))]]
    else:
        # scikit-learn's trees (not the histogram ones) cast their input to float32 and
        # compare it with float64 thresholds; skl2onnx reproduces that exactly over a float
        # input (thresholds adjusted), while over a double one it rounds the thresholds
        kinds = (
            [FloatTensorType, DoubleTensorType]
            if _casts_to_float32(estimator)
            else [
                DoubleTensorType,
                FloatTensorType,
            ]
        )
        if shape.kind == "columns":
            attempts = [
                [
                    (n, StringTensorType([None, 1]) if n in shape.strings else kind([None, 1]))
                    for n in shape.names
                ]
                for kind in kinds
            ]
        else:
            attempts = [[("features", kind([None, len(shape.names)]))] for kind in kinds]
    failure = ""
    for initial_types in attempts:
        try:
            graph = convert_sklearn(
                estimator, initial_types=initial_types, options=options, target_opset=OPSETS
            )
            # some converters declare double outputs onnxruntime's kernels do not give
            # (tree ensembles): such a graph is refused at load, so floats are tried next
            inference_session(graph.SerializeToString(), 1)
            return graph
        except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, ...
            failure = failure or f"{type(exc).__name__}: {str(exc)[:240]}"
    raise ConversionError(f"skl2onnx cannot convert this {_steps(estimator)}: {failure}")


def _casts_to_float32(estimator: Any) -> bool:
    """Whether a tree model that casts its input to float32 is in the estimator."""
    from sklearn.ensemble import BaseEnsemble
    from sklearn.tree import BaseDecisionTree

    found: list[bool] = []

    def visit(part: Any) -> None:
        if isinstance(part, (BaseDecisionTree, BaseEnsemble)):
            base = getattr(part, "estimator", None) or getattr(part, "estimator_", None)
            found.append(base is None or isinstance(base, BaseDecisionTree))
        for _, child in getattr(part, "steps", []) or []:
            visit(child)
        for item in getattr(part, "transformers_", []) or []:
            visit(item[1])

    visit(estimator)
    return any(found)


def _steps(estimator: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return "Pipeline(" + ", ".join(_steps(step) for _, step in estimator.steps) + ")"
    return type(estimator).__name__


def _set_metadata(graph: Any, shape: _Shape, labels: list[str], task: Task) -> None:
    from onnx import helper

    props = {"modelstream.task": task.value}
    if labels:
        props["modelstream.classes"] = json.dumps(labels)
    if shape.kind != "columns":  # named columns are named by their inputs
        props["modelstream.feature_names"] = json.dumps(shape.names)
    helper.set_model_props(graph, props)
