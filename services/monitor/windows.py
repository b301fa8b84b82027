"""Quality over time windows, in faust tables: the monitor's best-effort path.

The learner writes, per model version and batch, the sums of its labelled outcomes to
``monitor-outcomes`` (:class:`~modelstream.contracts.records.MonitorOutcomes`). A faust app
adds them up per ``model|version`` in two windowed tables:

* ``history`` - tumbling windows of ``history_window_s``: when a window closes it becomes one
  InfluxDB point (``model_quality``), the long-term history;
* ``live`` - hopping windows of ``quality_window_s`` advancing by a fifth of it: the newest
  full window is what ``/metrics`` shows (``modelstream_live_*``) and the alert rules read.

faust-streaming is used here, and only here, because a lost or repeated outcome costs
nothing that matters: faust's consumer can drop records around a rebalance, and in
at-least-once mode it reads ``monitor-outcomes`` uncommitted (an aborted learner batch is
counted too). What must be exact - which label was learned, the live metrics behind
rollback decisions, drift - lives in the learner on the streaming core.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from modelstream.contracts.codec import AvroCodec
from modelstream.contracts.records import MonitorOutcomes, QualitySums
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.boundary import logical_topic
from modelstream.kafka.clients import security_options
from modelstream.kafka.quiet import quiet_log
from modelstream.kafka.topology import LEARN_PARTITIONS, MONITOR_OUTCOMES, MONITOR_WINDOWS
from modelstream.ops.influx import InfluxWriter
from modelstream.services.monitor.logic.quality import add_sums, quality_of
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.telemetry import (
    LABEL_DELAY,
    LIVE_ACCURACY,
    LIVE_CALIBRATION_ERROR,
    LIVE_LOG_LOSS,
    LIVE_MAE,
    LIVE_RMSE,
    LIVE_WINDOW_LABELS,
)

log = logging.getLogger("modelstream.monitor.windows")
_unreadable = quiet_log(log, "monitor skipped unreadable")
LIVE_GAUGES = {
    "accuracy": LIVE_ACCURACY,
    "log_loss": LIVE_LOG_LOSS,
    "calibration_error": LIVE_CALIBRATION_ERROR,
    "mae": LIVE_MAE,
    "rmse": LIVE_RMSE,
    "label_delay_s": LABEL_DELAY,
    "labels": LIVE_WINDOW_LABELS,
}
# What the monitor writes to InfluxDB: measurement -> fields (tags: model, version; drift: kind).
INFLUX_MEASUREMENTS = {
    "model_quality": (
        "accuracy",
        "log_loss",
        "calibration_error",
        "mae",
        "rmse",
        "label_delay_s",
        "labels",
        "window_s",
    ),
    "drift": ("events", "detail"),
}


def _credentials(settings: MonitorSettings) -> Any:
    """faust's spelling of the same SASL/TLS settings every other service uses."""
    options = security_options(settings)
    if not options:
        return None
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        mechanism=settings.sasl_mechanism,
        ssl_context=options.get("ssl_context"),
    )


def _added(current: QualitySums | None, sums: QualitySums) -> QualitySums:
    return sums if current is None else add_sums(current, sums)


class QualityWindows:
    def __init__(
        self, settings: MonitorSettings, codec: AvroCodec, influx: InfluxWriter | None
    ) -> None:
        self.codec = codec
        self.influx = influx
        self.history_s = settings.history_window_s
        self.live_s = settings.quality_window_s
        self.app = faust.App(
            settings.group(MONITOR_WINDOWS),
            broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
            broker_credentials=_credentials(settings),
            store="memory://",
            datadir=str(settings.state_dir / "monitor-windows"),
            autodiscover=False,
            web_enabled=False,
            processing_guarantee="at_least_once",
            topic_replication_factor=settings.replication_factor,
            topic_partitions=LEARN_PARTITIONS,
            table_standby_replicas=0,
            table_cleanup_interval=min(30.0, max(0.5, self.history_s / 2)),
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.monitor_session_timeout_s,
            broker_heartbeat_interval=settings.monitor_session_timeout_s / 5,
            broker_commit_interval=1.0,
            # Table keys are (model|version, window range) and values QualitySums: JSON.
            key_serializer="json",
            value_serializer="json",
        )
        self.topic = self.app.topic(
            settings.topic(MONITOR_OUTCOMES),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        tables: dict[str, Any] = {
            "partitions": LEARN_PARTITIONS,
            "key_type": str,
            "default": lambda: None,
        }
        self.history = self.app.Table(
            "history", on_window_close=self._window_closed, **tables
        ).tumbling(self.history_s, expires=self.history_s)
        self.live = self.app.Table("live", **tables).hopping(
            self.live_s, self.live_s / 5, expires=self.live_s
        )
        self.app.agent(self.topic, name="quality-windows")(self._add)
        self.app.timer(1.0)(self._export)
        self.shown: set[tuple[str, str]] = set()
        self.added = 0
        self.started = False

    async def start(self) -> None:
        self.started = True
        await self.app.start()

    async def stop(self) -> None:
        if self.started:
            self._flush_history()
            await self.app.stop()

    async def _add(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                record = self.codec.decode(event.message.value, MonitorOutcomes)
            except (DecodeError, InvalidEventError) as exc:
                _unreadable.warn(
                    logical_topic(event.message.topic),
                    exc.reason,
                    "skipping an unreadable quality record: %s",
                    exc,
                )
                continue
            key = f"{record['model']}|{record['version']}"
            sums = record["sums"]
            self.history[key].apply(_added, sums)
            self.live[key].apply(_added, sums)
            self.added += sums["count"]

    def _window_closed(self, key: Any, sums: QualitySums | None) -> None:
        name, (_start, end) = key
        self._point(name, end, sums)

    def _point(self, name: str, end_s: float, sums: QualitySums | None) -> None:
        if self.influx is None or not sums or not sums["count"]:
            return
        model, _, version = name.rpartition("|")
        fields: dict[str, float | int] = {
            k: v for k, v in quality_of(sums).items() if k != "labels"
        }
        fields["labels"] = int(sums["count"])
        fields["window_s"] = self.history_s
        self.influx.write(
            "model_quality", {"model": model, "version": version}, fields, int(end_s * 1000)
        )

    def _flush_history(self) -> None:
        """Windows still open when the monitor stops are written as they are."""
        for (name, (_start, end)), sums in list(self.history.table.data.items()):
            self._point(name, min(end, time.time()), sums)

    def live_quality(self) -> dict[str, dict[str, float]]:
        """``model|version`` -> the metrics of its newest full live window (of the partitions
        this copy owns)."""
        now = time.time()
        newest: dict[str, tuple[float, QualitySums]] = {}
        for (name, (start, end)), sums in list(self.live.table.data.items()):
            if not sums or not start <= now < end:
                continue
            # Of the hopping windows containing now, the oldest covers the full length.
            if name not in newest or start < newest[name][0]:
                newest[name] = (start, sums)
        return {name: quality_of(sums) for name, (_, sums) in newest.items()}

    async def _export(self) -> None:
        shown = set()
        for name, metrics in self.live_quality().items():
            model, _, version = name.rpartition("|")
            shown.add((model, version))
            for metric, value in metrics.items():
                LIVE_GAUGES[metric].labels(model, version).set(value)
        for labels in self.shown - shown:  # windows gone (or moved to another copy)
            for gauge in LIVE_GAUGES.values():
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        self.shown = shown
