"""Property-based fuzzing of every input decoder and of the handling paths (no broker).

Each property runs 200 examples of 10 structured messages (2,000 per input type: wrong
types, huge and NaN values, truncations, unknown models, through decoders *and* handlers);
the byte-level properties in tests/unit/contracts/test_byte_fuzz.py run 10,000 records per
type through the decoders. Every message is either accepted or refused with a modelstream
error carrying a reason; nothing else may be raised, and nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import (
    RECORD_TYPES,
    Prediction,
    PredictionRequest,
    Task,
    TrainingExample,
)
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.learn.sgd import GDConfig
from modelstream.registry.artifact import Verified, seal
from modelstream.services.predictor.logic import PredictorLogic, ServingModel
from modelstream.services.trainer.logic import TrainerLogic
from tests.support.fuzzing import INPUT_TYPES, message_strategy
from tests.support.models import trained_body

CODEC = default_codec()
BODY = trained_body("breast-cancer")
NAMES = BODY["feature_names"]
MODELS = ["breast-cancer"]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass(frozen=True)
class Message:
    """An input record as the predictor's logic sees it."""

    key: bytes | None
    value: bytes
    timestamp: int = 1


def batches(type_name: str) -> st.SearchStrategy[list[bytes]]:
    return st.lists(message_strategy(type_name, MODELS, NAMES), min_size=10, max_size=10)


@pytest.mark.parametrize("type_name", sorted(INPUT_TYPES.values()))
@FUZZ
@given(data=st.data())
def test_decoders_accept_or_refuse_with_a_reason(type_name, data):
    for message in data.draw(batches(type_name)):
        try:
            CODEC.decode_any(message, RECORD_TYPES[type_name])
        except (DecodeError, InvalidEventError) as exc:
            assert exc.reason and str(exc)


def _predictor() -> PredictorLogic:
    logic: PredictorLogic = PredictorLogic(CODEC, output_format="avro")
    body = dict(BODY, version=1, stage="PRODUCTION")
    logic.install(
        ServingModel.from_verified(Verified(seal(body), signed=False), None), production=True
    )
    return logic


@FUZZ
@given(batches("PredictionRequest"))
def test_predictor_answers_or_dead_letters_every_request(messages):
    logic = _predictor()
    scored = logic.process([Message(b"k", m) for m in messages])
    predictions = [value for group in scored.groups for value in group.values]
    assert len(predictions) + len(scored.rejected) == len(messages)
    assert all(r.reason and r.error for r in scored.rejected)
    for value in predictions:
        prediction = CODEC.decode(value, Prediction)
        assert np.isfinite(list(prediction["scores"].values())).all()


@FUZZ
@given(batches("TrainingExample"))
def test_trainer_accepts_or_refuses_every_example(messages):
    logic = TrainerLogic(GDConfig())
    logic.define(
        Definition(
            name="breast-cancer",
            task=Task.BINARY,
            feature_names=tuple(NAMES),
            classes=("0", "1"),
            window_size=100_000,
        )
    )
    refused = 0
    for offset, data in enumerate(messages):
        try:
            logic.accept(CODEC.decode_any(data, TrainingExample), 0, offset)
        except (DecodeError, InvalidEventError) as exc:
            assert exc.reason
            refused += 1
    assert refused + len(logic.windows["breast-cancer"].examples) == len(messages)
    for example in logic.windows["breast-cancer"].examples:
        assert np.isfinite(example.x).all() and example.label in ("0", "1")


def test_extreme_features_are_dead_lettered_not_scored_as_nan():
    logic: PredictorLogic = PredictorLogic(CODEC, output_format="avro")
    body = dict(trained_body("digits"), version=1, stage="PRODUCTION")
    logic.install(
        ServingModel.from_verified(Verified(seal(body), signed=False), None), production=True
    )
    extreme = np.full(64, 1e308)
    extreme[::2] = -1e308
    fine = np.zeros(64)
    messages = [
        Message(
            b"k",
            CODEC.encode(
                PredictionRequest,
                {
                    "request_id": f"r{i}",
                    "model": "digits",
                    "features": row.astype("<f8").tobytes(),
                    "version": None,
                    "sent_at_ms": None,
                },
            ),
        )
        for i, row in enumerate([extreme, fine])
    ]
    scored = logic.process(messages)
    assert [len(g.values) for g in scored.groups] == [1] and len(scored.rejected) == 1
    dead = scored.rejected[0]
    assert dead.reason == "non-finite-score"
