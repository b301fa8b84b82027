"""Models in the other formats they arrive in, converted on the user's machine into what
``models import`` already takes (an ONNX graph, or the native network family), before
anything is written to a topic:

* :mod:`.pickles` - a scikit-learn estimator or pipeline saved with pickle or joblib, opened
  only with ``--trust-pickle`` (unpickling runs whatever code the file names), converted by
  skl2onnx;
* :mod:`.keras` - a Keras model saved as HDF5 (``.h5``) or as Keras 3's ZIP (``.keras``),
  read as data (its configuration JSON and weight arrays; Keras never loads it).

Either way the result carries rows and the original's own answers to them, and
:func:`check` scores those rows through the scorer the predictor would build from the
candidate, so what is sent is what was checked.

Only the CLI imports this package: no service unpickles or reads these formats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelstream.contracts.records import ModelBody, Task
from modelstream.errors import ModelstreamError

if TYPE_CHECKING:
    from modelstream.learn.mlp import MLPModel

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# How far the served model's answers may stray from the original's on the sample rows:
# absolute up to 1, relative beyond (a regression's values in the hundreds carry float32
# rounding of that size when the graph computes in floats).
DEFAULT_TOLERANCE = 1e-5

Row = Mapping[str, float | str]


class ConversionError(ModelstreamError):
    """The file cannot become a model modelstream serves; the message says why in a line
    (what a library raised may span many: it is folded into one, and cut short)."""

    reason = "unsupported-model"

    def __init__(self, message: str) -> None:
        line = " ".join(message.split())
        super().__init__(line if len(line) <= 400 else line[:399] + "…")


@dataclass(frozen=True)
class Converted:
    """A model in a form ``models import`` takes, and what it must still answer."""

    source: str  # the format it came in: "pickle" or "keras"
    reference: str  # what its answers were checked against, for the summary line
    graph: bytes | None  # an ONNX graph whose metadata names its features, classes, task
    network: MLPModel | None  # or a network the native mlp family expresses
    rows: list[Row]  # sample rows, by feature name
    expected: np.ndarray  # the original's answers: probabilities [N, classes] or values [N]
    rows_from: str  # where the rows came from, for the summary line
    # serve the graph as it is, even when its operators are all linear ones (a Keras graph
    # is already as small as it gets, and not laid out as the native linear kind reads)
    keep_graph: bool


@dataclass(frozen=True)
class Agreement:
    rows: int
    max_difference: float  # absolute up to 1, relative beyond


def convert(
    path: Path,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
    trust_pickle: bool = False,
    sample: Path | None = None,
) -> Converted:
    """The pickle or Keras file at ``path``, converted; ConversionError otherwise."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        from modelstream.convert import pickles

        return pickles.convert(
            path, features=features, classes=classes, task=task, trust=trust_pickle, sample=sample
        )
    if suffix in KERAS_SUFFIXES:
        from modelstream.convert import keras

        if sample is not None or trust_pickle:
            raise ConversionError(
                "--sample and --trust-pickle are for pickles: a Keras file is read as data and "
                "checked on its own"
            )
        return keras.convert(path, features=features, classes=classes, task=task)
    raise ConversionError(
        f"{path.name}: not a format models import converts "
        f"({', '.join(PICKLE_SUFFIXES + KERAS_SUFFIXES)}, or .onnx as it is)"
    )


def check(body: ModelBody, converted: Converted, tolerance: float) -> Agreement:
    """Score the sample rows through the candidate's own scorer and compare with the
    original's answers; ConversionError when they stray further than ``tolerance`` or do
    not even have the same shape."""
    from modelstream.registry.scoring import scorer_for

    scorer = scorer_for(body)
    try:
        X = np.array(
            [[float(row[f]) for f in scorer.feature_names] for row in converted.rows],
            dtype=np.float64,
        ).reshape(len(converted.rows), len(scorer.feature_names))
        categories = [{c: str(row[c]) for c in scorer.categorical} for row in converted.rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"the sample rows do not fit the converted model: {exc}") from None
    try:
        served = scorer.score(X, categories)
    except Exception as exc:  # onnxruntime's own errors name the node that failed
        raise ConversionError(f"the converted model does not run on the sample: {exc}") from None
    expected = converted.expected
    if served.shape != expected.shape:
        raise ConversionError(
            f"the converted model answers {list(served.shape)}, the original {list(expected.shape)}"
        )
    gap = np.abs(served - expected) / np.maximum(1.0, np.abs(expected))
    gap[np.isnan(gap)] = np.inf  # a NaN answer strays without bound
    difference = float(gap.max(initial=0.0))
    if difference > tolerance:
        worst = int(np.unravel_index(np.argmax(gap), gap.shape)[0])
        raise ConversionError(
            f"the converted model strays from the original by {difference:.3g} (row {worst} "
            f"of {converted.rows_from}; at most {tolerance:g} allowed): not imported"
        )
    return Agreement(len(converted.rows), difference)
