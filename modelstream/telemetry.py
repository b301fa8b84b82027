"""Every Prometheus metric modelstream exports, declared in one place, and the HTTP endpoint
each service serves them from, with its health.

Names follow ``modelstream_<thing>_<unit>``; counters end in ``_total``; labels are limited
to ``service``, ``model``, ``version`` and ``reason`` (a fixed set of dead-letter reasons).
Each service serves ``/metrics``, ``/health/live`` and ``/health/ready`` on its own port
(``MODELSTREAM_<SERVICE>_METRICS_PORT``).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

EVENTS_CONSUMED = Counter(
    "modelstream_events_consumed_total", "Records read from an input topic.", ["service"]
)
DEAD_LETTERS = Counter(
    "modelstream_dead_letters_total",
    "Records sent to the dead-letter topic.",
    ["service", "model"],
)
TRAINING_EXAMPLES = Counter(
    "modelstream_training_examples_total", "Valid training examples accepted.", ["model"]
)
WINDOW_EXAMPLES = Gauge(
    "modelstream_training_window_examples", "Examples in a model's training window.", ["model"]
)
TRAININGS = Counter(
    "modelstream_trainings_total", "Candidate models trained and emitted.", ["service", "model"]
)
TRAINING_SECONDS = Histogram(
    "modelstream_training_duration_seconds",
    "Wall time of one training procedure.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
VALIDATIONS = Counter(
    "modelstream_validations_total", "Validation reports written, passed or not.", ["model"]
)
VALIDATIONS_REJECTED = Counter(
    "modelstream_validations_rejected_total", "Candidates the gate rejected.", ["model"]
)
VALIDATION_SECONDS = Histogram(
    "modelstream_validation_duration_seconds",
    "Wall time of one validation.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CROSS_VALIDATION_SECONDS = Histogram(
    "modelstream_cross_validation_duration_seconds",
    "Compute time of one k-fold cross-validation (without reading Kafka).",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PUBLISHED = Counter(
    "modelstream_models_published_total", "Versions published to the registry.", ["model"]
)
ROLLBACKS = Counter(
    "modelstream_rollbacks_total", "Rollbacks carried out by the publisher.", ["model"]
)
PRODUCTION_VERSION = Gauge(
    "modelstream_production_version",
    "Version currently in production, per service's view.",
    ["service", "model"],
)
ARTIFACTS_REFUSED = Counter(
    "modelstream_artifacts_refused_total",
    "Artifacts whose digest, signature or shape failed verification.",
    ["service", "model"],
)


PREDICTIONS = Counter(
    "modelstream_predictions_total",
    "Predictions written, by the version that produced them.",
    ["model", "version"],
)
SHADOW_PREDICTIONS = Counter(
    "modelstream_shadow_predictions_total",
    "Challenger predictions written to the shadow topic.",
    ["model", "version"],
)
BATCH_SIZE = Histogram(
    "modelstream_batch_size_records",
    "Records per processed batch.",
    ["service"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "modelstream_batch_duration_seconds",
    "Time to decode, score and encode a batch (its commit is the transaction's).",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TRANSACTION_SECONDS = Histogram(
    "modelstream_transaction_duration_seconds",
    "Time from a transaction's first batch to its commit (exactly-once pipelines).",
    ["service"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RECORD_STAGE_SECONDS = Histogram(
    "modelstream_record_stage_seconds",
    "Time from an input record's timestamp (its producer's clock) to each stage of its "
    "handling by a pipeline: fetched (handed to its partition's lane), processed, sent "
    "(its outputs acknowledged by the broker) and committed (its transaction, or its "
    "offset under at-least-once, handed over).",
    ["service", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
PREDICTION_LATENCY = Histogram(
    "modelstream_prediction_latency_seconds",
    "End to end: request timestamp (sent_at_ms or record time) to the prediction's production.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "modelstream_consumer_lag_records", "Records behind the end of the input topic.", ["service"]
)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe many values at once: one numpy pass instead of one call per event.

    Relies on prometheus_client's Histogram keeping per-bucket (non-cumulative) counters in
    ``_buckets`` with bounds ``_upper_bounds``; checked by a unit test against ``observe``.
    """
    if len(values) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))


RECORDS_READ = Counter(
    "modelstream_records_read_total",
    "Input records read, by topic (without the prefix); a record read again after a "
    "rebalance or a failed transaction counts again.",
    ["service", "topic"],
)
RECORDS_REJECTED = Counter(
    "modelstream_records_rejected_total",
    "Input records that were dead-lettered (or, by readers that cannot, skipped), by topic "
    "(without the prefix) and reason.",
    ["service", "topic", "reason"],
)
SERVICE_READY = Gauge(
    "modelstream_service_ready",
    "1 while the service is started and its processing loop runs; 0 otherwise.",
    ["service"],
)
SERVICE_HEARTBEAT = Gauge(
    "modelstream_service_heartbeat_timestamp_seconds",
    "Last time the service's event loop ticked (it stops when the loop is blocked).",
    ["service"],
)
SERVICE_RESTARTS = Counter(
    "modelstream_service_restarts_total",
    "Children `modelstream up` restarted after they exited unexpectedly.",
    ["service"],
)


class Health:
    """What ``/health/live`` and ``/health/ready`` answer: live while the event loop ticks
    and no processing loop has died; ready once started, until stopping."""

    def __init__(self, service: str, stale_after_s: float) -> None:
        self.service = service
        self.stale_after_s = stale_after_s
        self.started = False
        self.stopping = False
        self.failure: str | None = None
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        self.last_tick = time.monotonic()
        SERVICE_HEARTBEAT.labels(self.service).set(time.time())

    def fail(self, why: str) -> None:
        self.failure = why
        SERVICE_READY.labels(self.service).set(0)

    def set_started(self) -> None:
        self.started = True
        SERVICE_READY.labels(self.service).set(1)

    def set_stopping(self) -> None:
        self.stopping = True
        SERVICE_READY.labels(self.service).set(0)

    @property
    def live(self) -> bool:
        return self.failure is None and time.monotonic() - self.last_tick < self.stale_after_s

    @property
    def ready(self) -> bool:
        return self.live and self.started and not self.stopping

    def report(self) -> dict[str, object]:
        return {
            "service": self.service,
            "live": self.live,
            "ready": self.ready,
            "failure": self.failure,
            "seconds_since_tick": round(time.monotonic() - self.last_tick, 3),
        }


def serve(port: int, host: str, health: Health | None = None) -> ThreadingHTTPServer | None:
    """Serve ``/metrics`` (and, with ``health``, ``/health/live`` and ``/health/ready``) on
    ``host:port`` from a daemon thread; port 0 serves nothing."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/health/live", "/health/ready") and health is not None:
                ok = health.live if path.endswith("live") else health.ready
                body = json.dumps(health.report()).encode()
                self._answer(200 if ok else 503, body, "application/json")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds are not worth a log line

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# -- the monitor: live quality of what is served ----------------------------------------------
LIVE_ACCURACY = Gauge(
    "modelstream_live_accuracy_ratio",
    "Accuracy over the live quality window (the last MODELSTREAM_QUALITY_WINDOW_S).",
    ["model", "version"],
)
LIVE_LOG_LOSS = Gauge(
    "modelstream_live_log_loss_nats",
    "Mean log-loss over the live quality window.",
    ["model", "version"],
)
LIVE_CALIBRATION_ERROR = Gauge(
    "modelstream_live_calibration_error_ratio",
    "Expected calibration error (10 bins) over the live quality window.",
    ["model", "version"],
)
LIVE_MAE = Gauge(
    "modelstream_live_mae_units",
    "Regression: mean absolute error over the live quality window (label units).",
    ["model", "version"],
)
LIVE_RMSE = Gauge(
    "modelstream_live_rmse_units",
    "Regression: root mean squared error over the live quality window (label units).",
    ["model", "version"],
)
LIVE_WINDOW_LABELS = Gauge(
    "modelstream_live_window_labels",
    "Labelled predictions in the live quality window.",
    ["model", "version"],
)
LABEL_DELAY = Gauge(
    "modelstream_label_delay_seconds",
    "Mean time from prediction to its label, in the live quality window.",
    ["model", "version"],
)
LABELS_JOINED = Counter(
    "modelstream_labels_joined_total",
    "Feedback labels joined with their request and prediction.",
    ["model"],
)
JOIN_EXPIRED = Counter(
    "modelstream_join_expired_total",
    "Request ids dropped from the join after the TTL without all three parts.",
    ["model"],
)
JOIN_DUPLICATES = Counter(
    "modelstream_join_duplicates_total",
    "Parts of a request id that arrived again (sent twice) and were ignored.",
    ["model"],
)
JOIN_MATCH_RATIO = Gauge(
    "modelstream_join_match_ratio",
    "Joined / (joined + expired) since the monitor started.",
    ["model"],
)
JOIN_PENDING = Gauge(
    "modelstream_join_pending_records", "Request ids held in the join table.", ["service"]
)
JOIN_STATE_BYTES = Gauge(
    "modelstream_join_state_bytes",
    "Bytes of the request, prediction and feedback parts the join table holds until their "
    "label completes or expires (a complete label keeps only a marker).",
    ["service"],
)
ONLINE_LEARNED = Counter(
    "modelstream_online_labels_learned_total",
    "Labels the online learner learned from.",
    ["model"],
)
ONLINE_LEARNER_LABELS = Gauge(
    "modelstream_online_learner_labels",
    "Labels the current online learner has learned since it started from production "
    "(restored after a restart).",
    ["model"],
)
LEARNER_LAG = Gauge(
    "modelstream_learner_lag_seconds",
    "Per model: age of the newest labelled batch its learner has committed (from the join's "
    "write to the learner's commit); one model's labels flooding a learner task show here as "
    "the other models' lag.",
    ["model"],
)
ONLINE_GAIN = Gauge(
    "modelstream_online_gain_ratio",
    "Online learner minus production on the same recent labels (accuracy, or -MAE).",
    ["model"],
)
ONLINE_CANDIDATES = Counter(
    "modelstream_online_candidates_total",
    "Online-learned candidates sent to the validator.",
    ["model"],
)
DRIFT_EVENTS = Counter(
    "modelstream_drift_events_total",
    "Drift detections (error stream or feature distribution).",
    ["model", "version"],
)
ROLLBACKS_REQUESTED = Counter(
    "modelstream_rollbacks_requested_total",
    "Automatic rollbacks the monitor asked for.",
    ["model"],
)
INFLUX_POINTS = Counter(
    "modelstream_influxdb_points_total", "Points written to InfluxDB.", ["service"]
)
INFLUX_WRITE_FAILURES = Counter(
    "modelstream_influxdb_write_failures_total",
    "Points InfluxDB did not take after retries, or dropped from a full queue.",
    ["service"],
)
FEEDBACK_ACCEPTED = Counter(
    "modelstream_feedback_accepted_total",
    "Valid feedback records taken into the join.",
    ["model"],
)
MONITOR_FORWARDED = Counter(
    "modelstream_monitor_forwarded_total",
    "Records the join forwarded to the join partition of their request id (written by a "
    "producer that partitions otherwise), by the logical topic they were read from.",
    ["topic"],
)
MONITOR_RESTORE_SECONDS = Histogram(
    "modelstream_monitor_restore_duration_seconds",
    "Time to restore (or catch up) one task's state from its changelog after an assignment.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# -- the gateway ---------------------------------------------------------------------------
GATEWAY_CALLS = Counter(
    "modelstream_gateway_calls_total",
    "HTTP inference calls by model, protocol (oip, tf) and status code.",
    ["model", "protocol", "status"],
)
GATEWAY_CALL_SECONDS = Histogram(
    "modelstream_gateway_call_seconds",
    "An inference call from its arrival to its answer.",
    ["model", "protocol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GATEWAY_TIMEOUTS = Counter(
    "modelstream_gateway_timeouts_total",
    "Calls answered 504: a prediction did not arrive in time.",
    ["model"],
)
GATEWAY_UNCLAIMED = Counter(
    "modelstream_gateway_unclaimed_replies_total",
    "Replies read from this copy's partitions that answer no call it is waiting on "
    "(a call that timed out, another copy's call after partitions moved, or a forgery).",
)
GATEWAY_REFUSED = Counter(
    "modelstream_gateway_refused_calls_total",
    "Calls refused at once (429) because too many were in flight.",
)
