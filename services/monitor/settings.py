"""Monitor settings."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from modelstream.services.monitor.logic import WatchConfig
from modelstream.settings import ServiceSettings, metrics_port_field


class MonitorSettings(ServiceSettings):
    service: ClassVar[str] = "monitor"

    monitor_metrics_port: int = metrics_port_field(9105)
    join_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a request id waits for its missing parts before it expires.",
    )
    window: int = Field(default=1000, ge=10, description="Labels in the live-metric window.")
    drift_delta: float = Field(default=0.002, gt=0, lt=1, description="ADWIN confidence.")
    feature_drift_window: int = Field(default=500, ge=50)
    feature_drift_threshold: float = Field(
        default=0.5, gt=0, description="Shift of a feature's window mean, in training stds."
    )
    score_drift_threshold: float = Field(
        default=0.25,
        gt=0,
        description="Population stability index of a window of live top scores against the "
        "validator's hold-out deciles above which the scores have drifted.",
    )
    online_learning_rate: float = Field(default=0.01, gt=0, description="Online SGD step.")
    online_l2: float = Field(default=0.0, ge=0)
    online_learner: Literal["arrays", "river"] = Field(
        default="arrays",
        description="The linear online learner: 'arrays' makes river's updates over numpy "
        "arrays (equal to 1e-9, several times faster); 'river' runs river's own pipeline.",
    )
    export_every_labels: int = Field(default=2000, ge=1)
    export_every_s: float = Field(default=60.0, gt=0)
    export_min_labels: int = Field(default=200, ge=1)
    export_min_gain: float = Field(
        default=0.01,
        description="Export only when the online learner beats production on the same recent "
        "labels by this much (accuracy, or MAE for regression).",
    )
    rollback_margin: float = Field(default=0.05, ge=0)
    rollback_min_labels: int = Field(default=200, ge=10)
    train_cooldown_s: float = Field(default=60.0, ge=0)
    write_training: bool = Field(
        default=True, description="Write joined labels to `training` (retraining, holdouts)."
    )
    monitor_session_timeout_s: float = Field(
        default=10.0,
        ge=6,
        description="Consumer-group session: how fast a dead monitor's partitions move to another.",
    )
    influxdb_url: str | None = Field(
        default=None,
        description="InfluxDB 1.x base URL (e.g. http://127.0.0.1:8086); unset: "
        "no long-term history.",
    )
    influxdb_database: str = Field(default="modelstream")
    influxdb_username: str | None = Field(default=None)
    influxdb_password: SecretStr | None = Field(default=None)
    history_window_s: float = Field(
        default=60.0,
        gt=0,
        description="Tumbling window of the quality history: one InfluxDB "
        "point per model version and window.",
    )
    quality_window_s: float = Field(
        default=300.0,
        gt=0,
        description="Hopping window (advancing by a fifth of it) of the "
        "windowed quality on /metrics.",
    )
    monitor_batch_max_records: int = Field(default=5000, ge=1)
    monitor_commit_interval_ms: float = Field(
        default=100.0,
        ge=0,
        description="How often each stage's open transaction commits (Kafka Streams' "
        "commit.interval.ms); later batches of a transaction see the pending state of its "
        "earlier ones. 0 commits every batch.",
    )

    def watch_config(self) -> WatchConfig:
        return WatchConfig(
            window=self.window,
            drift_delta=self.drift_delta,
            feature_drift_window=self.feature_drift_window,
            feature_drift_threshold=self.feature_drift_threshold,
            score_drift_threshold=self.score_drift_threshold,
            learning_rate=self.online_learning_rate,
            l2=self.online_l2,
            learner=self.online_learner,
            export_every_labels=self.export_every_labels,
            export_every_ms=int(self.export_every_s * 1000),
            export_min_labels=self.export_min_labels,
            export_min_gain=self.export_min_gain,
            rollback_margin=self.rollback_margin,
            rollback_min_labels=self.rollback_min_labels,
            train_cooldown_ms=int(self.train_cooldown_s * 1000),
        )
