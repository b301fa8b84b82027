"""Predictor settings."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from modelstream.settings import Settings


class Delivery(StrEnum):
    EXACTLY_ONCE = "exactly-once"
    AT_LEAST_ONCE = "at-least-once"


class PredictorSettings(Settings):
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    delivery: Delivery = Field(
        default=Delivery.EXACTLY_ONCE,
        description="exactly-once (Kafka transactions) or at-least-once (brokers without them).",
    )
    batch_max_records: int = Field(default=5000, ge=1)
    max_versions: int = Field(default=10, ge=1, description="Versions kept loaded per model.")
    session_timeout_ms: int = Field(default=10000, ge=6000)
