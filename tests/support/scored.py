"""`monitor-scored` records as the predictor writes them (its own writer), for tests that
feed the monitor without running a predictor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import features_id
from modelstream.contracts.records import Label
from modelstream.services.predictor.app import ScoredWriter
from modelstream.services.predictor.logic import ScoredGroup, ScoredRows

CODEC = default_codec()


def scored_records(
    model: str,
    version: int,
    request_ids: Sequence[str],
    feature_names: Sequence[str],
    features: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    predicted_at_ms: int,
    predictions: Sequence[Label] | None = None,
) -> list[tuple[int, bytes]]:
    """(partition, value) of the records one predictor batch of these rows writes."""
    n = len(request_ids)
    scores = np.asarray(scores, dtype=np.float64).reshape(n, -1)
    if predictions is None:
        predictions = (
            [classes[i] for i in scores.argmax(axis=1).tolist()]
            if classes
            else scores[:, 0].tolist()
        )
    rows = ScoredRows(
        model,
        version,
        predicted_at_ms,
        features_id(feature_names),
        np.asarray(features, dtype=np.float64).reshape(n, -1),
        [],
        list(classes),
        scores,
        list(predictions),
    )
    group: ScoredGroup[object] = ScoredGroup(
        False, [None] * n, [b""] * n, [r.encode() for r in request_ids], rows
    )
    writer = ScoredWriter(CODEC, "monitor-scored")
    return [(o.partition or 0, o.value or b"") for o in writer.records(group)]  # type: ignore[arg-type]
