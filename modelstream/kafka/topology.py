"""The topology: every topic modelstream uses, declared once, and its idempotent provisioning."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from modelstream.errors import InvalidEventError
from modelstream.kafka.clients import admin_client
from modelstream.kafka.writers import DEAD_LETTER_MAX_BYTES
from modelstream.settings import Settings

DAY_MS = 24 * 3600 * 1000
FOREVER = "-1"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: logical name, what its key and value are, and how the broker keeps it."""

    name: str
    key: str
    value: str
    producers: str
    consumers: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


TRAINING = "training"
CONTROL = "control"
CANDIDATES = "candidates"
VALIDATIONS = "validations"
MODELS = "models"
MODEL_HISTORY = "model-history"
REQUESTS = "requests"
PREDICTIONS = "predictions"
SHADOW_PREDICTIONS = "shadow-predictions"
FEEDBACK = "feedback"
# The gateway's reply path: a request carrying REPLY_PARTITION_HEADER is also answered on
# that partition of `replies`, which one gateway copy owns.
REPLIES = "replies"
REPLY_PARTITION_HEADER = "modelstream.reply-partition"
AUDIT = "audit"
DEADLETTER = "deadletter"
# Where predictors mark the batch each is handling (kafka/in_flight.py): crash counts that
# follow a partition from copy to copy.
PREDICTOR_IN_FLIGHT = "predictor-in-flight"
# The monitor's own topics (internal). The predictor writes what the join needs of each
# scored request to `monitor-scored`, in the join partition of its request id; the join
# forwards feedback a user's producer put elsewhere to `monitor-feedback`, so that it does
# not depend on how users' producers partition; the join and the learner keep their tables in
# compacted changelogs partitioned like their inputs. The quality windows are faust tables
# of the app "<prefix>monitor-windows": their changelogs are provisioned here, since a topic
# faust creates itself can be missing from the metadata its first assignment sees.
MONITOR_SCORED = "monitor-scored"
MONITOR_FEEDBACK = "monitor-feedback"
MONITOR_JOIN_STATE = "monitor-join-state"
MONITOR_LABELLED = "monitor-labelled"
MONITOR_MODEL_STATE = "monitor-model-state"
MONITOR_OUTCOMES = "monitor-outcomes"
MONITOR_WINDOWS = "monitor-windows"  # the faust app of the quality windows (its group too)
MONITOR_HISTORY_CHANGELOG = f"{MONITOR_WINDOWS}-history-changelog"
MONITOR_LIVE_CHANGELOG = f"{MONITOR_WINDOWS}-live-changelog"
MONITOR_TOPICS = (
    MONITOR_SCORED,
    MONITOR_FEEDBACK,
    MONITOR_JOIN_STATE,
    MONITOR_LABELLED,
    MONITOR_MODEL_STATE,
    MONITOR_OUTCOMES,
    MONITOR_HISTORY_CHANGELOG,
    MONITOR_LIVE_CHANGELOG,
)
# An internal record carries one or more user records, or rows as large as they are (a scored
# row, a forwarded feedback record, a batch of labels), so internal topics take more than the
# user topics.
INTERNAL_MAX_BYTES = DEAD_LETTER_MAX_BYTES
# Rows may carry tensors (an encoded image, a text, a file): the topics of rows and their
# answers take records up to 2 MiB, so a 1 MB image request fits with room to spare, and its
# dead letter (value and headers) fits the dead-letter topic's 4 MiB.
ROW_MAX_BYTES = 2 * 1024 * 1024
# Artifacts carry whole models: a gradient-boosted ensemble or a network exported to ONNX is
# tens of MB. The topics that carry artifacts take records up to this size (one record per
# version: verified and swapped as a whole, never reassembled from parts); the clients'
# request limit and the brokers' socket.request.max.bytes are sized to match.
ARTIFACT_MAX_BYTES = 128 * 1024 * 1024
JOIN_PARTITIONS = 6  # tasks of the join: scored rows, forwarded feedback and its changelog
LEARN_PARTITIONS = 3  # tasks of the learner: `monitor-labelled` and its changelog

TOPOLOGY: tuple[TopicSpec, ...] = (
    # The log is the dataset: training examples are kept until an operator says otherwise.
    TopicSpec(
        TRAINING,
        "model name",
        "TrainingExample",
        "users",
        "trainer, validator",
        3,
        {"retention.ms": FOREVER, "max.message.bytes": str(ROW_MAX_BYTES)},
    ),
    # One partition: commands about different models stay in issue order for every reader.
    TopicSpec(
        CONTROL,
        "model name",
        "Command",
        "users, CLI, monitor",
        "trainer, validator, publisher, predictor",
        1,
        {"retention.ms": FOREVER},
    ),
    TopicSpec(
        CANDIDATES,
        "model name",
        "ModelArtifact",
        "trainer, monitor",
        "validator",
        3,
        {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(ARTIFACT_MAX_BYTES)},
    ),
    TopicSpec(
        VALIDATIONS,
        "model name",
        "ValidationReport",
        "validator",
        "publisher",
        3,
        {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(ARTIFACT_MAX_BYTES)},
    ),
    TopicSpec(
        MODELS,
        "model name",
        "ModelArtifact",
        "publisher",
        "predictor, monitor",
        3,
        {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.1",
            "segment.ms": str(3600 * 1000),
            "max.message.bytes": str(ARTIFACT_MAX_BYTES),
        },
    ),
    # Keys are name:version, so compaction keeps every version and only drops exact re-sends.
    TopicSpec(
        MODEL_HISTORY,
        "name:version",
        "ModelArtifact",
        "publisher",
        "publisher (rollback), audit, CLI",
        3,
        {"cleanup.policy": "compact", "max.message.bytes": str(ARTIFACT_MAX_BYTES)},
    ),
    TopicSpec(
        REQUESTS,
        "request id",
        "PredictionRequest",
        "users",
        "predictor",
        6,
        {"retention.ms": str(DAY_MS), "max.message.bytes": str(ROW_MAX_BYTES)},
    ),
    TopicSpec(
        PREDICTIONS,
        "request id",
        "Prediction",
        "predictor",
        "users",
        6,
        {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(ROW_MAX_BYTES)},
    ),
    TopicSpec(
        SHADOW_PREDICTIONS,
        "request id",
        "Prediction",
        "predictor",
        "users",
        6,
        {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(ROW_MAX_BYTES)},
    ),
    TopicSpec(
        FEEDBACK, "request id", "Feedback", "users", "monitor", 6, {"retention.ms": str(7 * DAY_MS)}
    ),
    # Answers to synchronous calls, to the partition the calling gateway copy owns.
    TopicSpec(
        REPLIES,
        "request id",
        "Prediction",  # a rejected request: no value, `reason` and `error` headers
        "predictor",
        "gateway",
        6,
        {"retention.ms": str(3600 * 1000), "max.message.bytes": str(ROW_MAX_BYTES)},
    ),
    TopicSpec(
        PREDICTOR_IN_FLIGHT,
        "input topic:partition",
        "InFlightMarker",
        "predictor",
        "predictor (on assignment)",
        1,
        {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
    ),
    TopicSpec(
        AUDIT,
        "model name",
        "AuditEvent",
        "every service",
        "operators",
        3,
        {"retention.ms": FOREVER},
    ),
    TopicSpec(
        DEADLETTER,
        "original key",
        "original bytes (headers: reason, source)",
        "every service",
        "operators",
        3,
        # Larger than any input topic's limit: every input record fits with its headers.
        {"retention.ms": str(14 * DAY_MS), "max.message.bytes": str(DEAD_LETTER_MAX_BYTES)},
    ),
    TopicSpec(
        MONITOR_SCORED,
        "model name",
        "MonitorScored",
        "predictor",
        "monitor",
        JOIN_PARTITIONS,
        {"retention.ms": str(DAY_MS), "max.message.bytes": str(INTERNAL_MAX_BYTES)},
    ),
    TopicSpec(
        MONITOR_FEEDBACK,
        "request id",
        "Feedback",
        "monitor",
        "monitor",
        JOIN_PARTITIONS,
        {"retention.ms": str(DAY_MS), "max.message.bytes": str(INTERNAL_MAX_BYTES)},
    ),
    TopicSpec(
        MONITOR_JOIN_STATE,
        "request id",
        "MonitorJoinState",
        "monitor",
        "monitor",
        JOIN_PARTITIONS,
        {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.2",
            "max.message.bytes": str(INTERNAL_MAX_BYTES),
        },
    ),
    TopicSpec(
        MONITOR_LABELLED,
        "model name",
        "MonitorLabelledBatch",
        "monitor",
        "monitor",
        LEARN_PARTITIONS,
        {"retention.ms": str(DAY_MS), "max.message.bytes": str(INTERNAL_MAX_BYTES)},
    ),
    TopicSpec(
        MONITOR_MODEL_STATE,
        "model name",
        "MonitorModelState",
        "monitor",
        "monitor",
        LEARN_PARTITIONS,
        {"cleanup.policy": "compact"},
    ),
    TopicSpec(
        MONITOR_OUTCOMES,
        "model|version",
        "MonitorOutcomes",
        "monitor",
        "monitor (quality windows)",
        LEARN_PARTITIONS,
        {"retention.ms": str(DAY_MS)},
    ),
    TopicSpec(
        MONITOR_HISTORY_CHANGELOG,
        "model|version, window",
        "tumbling-window sums (JSON, faust)",
        "monitor",
        "monitor",
        LEARN_PARTITIONS,
        {"cleanup.policy": "compact,delete", "retention.ms": str(DAY_MS)},
    ),
    TopicSpec(
        MONITOR_LIVE_CHANGELOG,
        "model|version, window",
        "hopping-window sums (JSON, faust)",
        "monitor",
        "monitor",
        LEARN_PARTITIONS,
        {"cleanup.policy": "compact,delete", "retention.ms": str(DAY_MS)},
    ),
)

TOPICS_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPOLOGY}
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def max_message_bytes(name: str) -> int:
    """The largest record the topic (logical name) takes, as provisioned."""
    spec = TOPICS_BY_NAME[name]
    return int(spec.config.get("max.message.bytes", BROKER_DEFAULT_MAX_MESSAGE_BYTES))


def ensure_fits(name: str, value: bytes, key: bytes | None = None) -> None:
    """Refuse, before anything is sent, an output the topic would refuse: a producer error
    inside a transaction would abort everything else in it."""
    size = len(value) + len(key or b"") + 512  # record and batch framing, headers
    if size > max_message_bytes(name):
        raise InvalidEventError(
            "output-too-large",
            f"the {name} record would have {size} bytes; the topic takes {max_message_bytes(name)}",
        )


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)


def _full_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    config = dict(spec.config)
    if settings.replication_factor >= 3:
        config.setdefault("min.insync.replicas", "2")
    return config


async def create_topics(
    settings: Settings, only: Collection[str] | None = None, *, reconcile: bool = True
) -> ProvisionReport:
    """Create missing topics and, with ``reconcile``, grow partition counts and re-apply
    declared configs (of every declared topic, or of the logical names in ``only``).
    Without it only Create and Describe ACLs are needed, as a service's principal has."""
    declared = [t for t in TOPOLOGY if only is None or t.name in only]
    report = ProvisionReport()
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in declared if settings.topic(t.name) not in existing]
        if missing:
            new = [
                NewTopic(
                    settings.topic(t.name),
                    t.partitions,
                    settings.replication_factor,
                    topic_configs=_full_config(t, settings),
                )
                for t in missing
            ]
            try:
                await admin.create_topics(new, timeout_ms=30000)
            except TopicAlreadyExistsError:
                pass  # a concurrent `topics create` won the race; both are fine
            report.created = [t.name for t in missing]
            await _until_visible(admin, {settings.topic(t.name) for t in missing})
        present = [t for t in declared if settings.topic(t.name) in existing]
        report.existing = [t.name for t in present]
        if present and reconcile:
            described = await admin.describe_topics([settings.topic(t.name) for t in present])
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            grow = {
                settings.topic(t.name): NewPartitions(t.partitions)
                for t in present
                if counts.get(settings.topic(t.name), t.partitions) < t.partitions
            }
            if grow:
                await admin.create_partitions(grow)
                report.grown = sorted(grow)
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        settings.topic(t.name),
                        configs=_full_config(t, settings),
                    )
                    for t in present
                ]
            )
    return report


async def _until_visible(
    admin: AIOKafkaAdminClient, names: set[str], timeout_s: float = 30.0
) -> None:
    """Creation returns once the controller committed it; brokers' metadata follows a moment
    later, and their partitions' replicas a moment after that. Wait for both, so a
    `topics list` right after `topics create` sees every topic whole."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (
        names <= set(await admin.list_topics())
        and all(
            d["partitions"] and all(p["replicas"] for p in d["partitions"])
            for d in await admin.describe_topics(sorted(names))
        )
    ):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"created topics not visible after {timeout_s}s")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class TopicState:
    """What the broker holds for one topic."""

    partitions: int
    replication_factor: int
    config: dict[str, str]  # non-default configs only


async def describe_topics(settings: Settings) -> dict[str, TopicState]:
    """Partitions, replication and non-default configs of every declared topic that exists."""
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        names = [settings.topic(t.name) for t in TOPOLOGY if settings.topic(t.name) in existing]
        if not names:
            return {}
        described = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
        non_default: dict[str, dict[str, str]] = {}
        for response in configs:
            for resource in response.resources:
                # (error_code, error_message, type, name, config entries)
                name, entries = resource[3], resource[4]
                non_default[name] = {
                    e[0]: e[1] for e in entries if e[1] is not None and not _is_default(e)
                }
        result: dict[str, TopicState] = {}
        for topic in described:
            partitions = topic["partitions"]
            result[topic["topic"]] = TopicState(
                len(partitions),
                len(partitions[0]["replicas"]) if partitions else 0,
                non_default.get(topic["topic"], {}),
            )
        return result


def _is_default(entry: tuple[Any, ...]) -> bool:
    # DescribeConfigs v1+ entries: (name, value, read_only, config_source, is_sensitive, ...);
    # source 1 = DYNAMIC_TOPIC_CONFIG, the only one we set.
    return len(entry) > 3 and entry[3] != 1
