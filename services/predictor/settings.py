"""Predictor settings."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from modelstream.settings import ServiceSettings, metrics_port_field


class Delivery(StrEnum):
    EXACTLY_ONCE = "exactly-once"
    AT_LEAST_ONCE = "at-least-once"


class PredictorSettings(ServiceSettings):
    service: ClassVar[str] = "predictor"

    predictor_metrics_port: int = metrics_port_field(9104)
    delivery: Delivery = Field(
        default=Delivery.EXACTLY_ONCE,
        description="exactly-once (Kafka transactions) or at-least-once (brokers without them).",
    )
    predictor_batch_max_records: int = Field(default=5000, ge=1, description="Records per batch.")
    predictor_test_abort_on: str | None = Field(
        default=None,
        description="Test hook: the process aborts (SIGABRT, as a native crash would) while "
        "handling a batch that holds a request with this id. Never set it in production.",
    )
    max_versions: int = Field(default=10, ge=1, description="Versions kept loaded per model.")
    predictor_onnx_threads: int = Field(
        default=1,
        ge=1,
        description="onnxruntime intra-op threads per ONNX model: 1 scales by running more "
        "predictor processes, one per core.",
    )
    predictor_scoring_threads: int = Field(
        default=0,
        ge=0,
        description="Worker threads that decode and score batches of graph models while the "
        "event loop fetches and sends (onnxruntime releases the GIL while it runs; decoding "
        "and image preprocessing do not). 0 scores on the event loop: measured on two cores "
        "shared with the broker, a thread lost throughput and doubled the image model's "
        "latency; give it 1 where a predictor has a core to spare.",
    )
    predictor_commit_interval_ms: float = Field(
        default=20.0,
        ge=0,
        description="Exactly-once: how often each input partition's open transaction "
        "commits (Kafka Streams' commit.interval.ms). Predictions are sent as soon as a "
        "batch is scored (read_uncommitted readers, like the gateway, see them at once); "
        "read_committed readers see them at the commit. 0 commits every batch.",
    )
    predictor_commit_max_records: int = Field(
        default=20_000,
        ge=1,
        description="Exactly-once: a transaction commits after this many requests even "
        "before its interval ends.",
    )
    predictor_monitor_scored: bool = Field(
        default=True,
        description="Write each scored row's features, version and scores to the internal "
        "`monitor-scored` topic, in the transaction of its prediction: what the monitor learns "
        "from. Off when no monitor runs.",
    )
    predictor_session_timeout_s: float = Field(
        default=10.0,
        ge=6,
        description="Consumer-group session: how fast a dead predictor's "
        "partitions move to another.",
    )
