"""The predictor's logic with a categorical graph (a scikit-learn pipeline with a one-hot
encoded column): categories in the clients' form are scored from the batch's columns, any
other form of the same values scores the same, and what is missing or unknown is refused
with its reason."""

from dataclasses import dataclass

import numpy as np
import pytest

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.registry.artifact import Verified, seal
from modelstream.registry.onnx_model import describe, onnx_candidate
from modelstream.services.predictor.logic import PredictorLogic, ServingModel
from tests.support import onnx_models

CODEC = default_codec()


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_790_000_000_000


@pytest.fixture(scope="module")
def pipeline():  # type: ignore[no-untyped-def]
    bundle = onnx_models.pipeline_model()
    body = onnx_candidate("shop", describe(bundle.graph))
    body["version"] = 1
    model = ServingModel.from_verified(Verified(seal(body), False), None)
    return bundle, model


def blocked(data: bytes, centre: str) -> bytes:
    """The same request with its categories written as one block with its byte size first
    (a legal Avro form the clients do not write)."""
    entry = b"\x0ccentre" + bytes([2 * len(centre)]) + centre.encode()
    plain = b"\x02" + entry + b"\x00"
    assert data.count(plain) == 1
    return data.replace(plain, b"\x01" + bytes([2 * len(entry)]) + entry + b"\x00")


def scores(values: list[bytes]) -> dict[str, float]:
    out = {}
    for value in values:
        prediction = CODEC.decode_any(value, Prediction)
        out[prediction["request_id"]] = prediction["scores"]["1"]
    return out


def serving(model: ServingModel) -> PredictorLogic:
    logic = PredictorLogic(CODEC, output_format="avro")
    logic.install(model, production=True)
    return logic


def column_requests(bundle, n: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The first ``n`` rows as the clients write them: categories in the model's order."""
    encoder = RequestEncoder()
    return [
        encoder.encode(f"r{i}", "shop", bundle.X[i], packed=True, categories=bundle.categories[i])
        for i in range(n)
    ]


def test_categorical_rows_score_the_same_in_every_form(pipeline):  # type: ignore[no-untyped-def]
    bundle, model = pipeline
    logic = serving(model)
    n = 40
    ordered = column_requests(bundle, n)
    columns = logic._reader.columns()
    assert all(isinstance(logic._decode(v, columns)[5], int) for v in ordered)  # the columns
    columnar = logic.process([Record(v) for v in ordered])
    assert not columnar.rejected
    expected = model.model.score(bundle.X[:n], bundle.categories[:n])[:, 1]
    got = scores(columnar.groups[0].values)
    np.testing.assert_allclose([got[f"r{i}"] for i in range(n)], expected, rtol=1e-6)

    # half the rows in another form: the group is read row by row, with the same scores
    mixed = [
        blocked(v, bundle.categories[i]["centre"]) if i % 2 else v for i, v in enumerate(ordered)
    ]
    assert CODEC.decode(mixed[1], PredictionRequest)["categories"] == bundle.categories[1]
    by_rows = logic.process([Record(v) for v in mixed])
    assert not by_rows.rejected
    assert scores(by_rows.groups[0].values) == got

    encoder = RequestEncoder()
    refused = logic.process(
        [
            Record(encoder.encode("none", "shop", bundle.X[0], packed=True)),
            Record(
                encoder.encode(
                    "extra",
                    "shop",
                    bundle.X[0],
                    packed=True,
                    categories={"centre": "east", "colour": "red"},
                )
            ),
            Record(ordered[2]),
        ]
    )
    reasons = {r.message.value: r.reason for r in refused.rejected}
    assert sorted(reasons.values()) == ["extra-features", "missing-features"]
    assert list(scores(refused.groups[0].values)) == ["r2"]


def test_the_monitors_rows_stay_with_their_requests_when_some_are_refused(pipeline):  # type: ignore[no-untyped-def]
    """Rows whose scores are not finite are refused; the rows written for the monitor are
    those of the answered requests, each with its own features and categories."""
    from unittest import mock

    bundle, model = pipeline
    logic = serving(model)
    n = 12
    requests = column_requests(bundle, n)
    real = model.model.score

    def some_not_finite(X, categories=None):  # type: ignore[no-untyped-def]
        out = real(X, categories).copy()
        out[[2, 7]] = np.nan
        return out

    with mock.patch.object(model.model, "score", side_effect=some_not_finite):
        scored = logic.process([Record(v) for v in requests])
    assert sorted(r.message.value for r in scored.rejected) == sorted([requests[2], requests[7]])
    (group,) = scored.groups
    rows = group.rows
    assert rows is not None
    kept = [i for i in range(n) if i not in (2, 7)]
    assert group.request_ids == [f"r{i}".encode() for i in kept]
    np.testing.assert_array_equal(rows.features, bundle.X[kept])
    names = model.model.categorical
    assert rows.categories == [bundle.categories[i][c] for i in kept for c in names]
    assert rows.scores.shape == (len(kept), 2) and np.isfinite(rows.scores).all()
