"""Reading the registry back from Kafka.

``models`` is compacted: reading it to the end and keeping the newest record per key gives
the production version of every model. ``model-history`` holds every version published.
(The ``control`` log is followed by ``modelstream.control.ControlFollower``.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import MAX_NAME
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import ModelArtifact
from modelstream.kafka.boundary import Boundary, logical_topic, record_failure
from modelstream.kafka.clients import make_consumer, partitions_of, read_to_end
from modelstream.kafka.quiet import quiet_log
from modelstream.kafka.topology import MODEL_HISTORY, MODELS
from modelstream.registry.artifact import PUBLIC_KEY_NAME, Verified, load_public_key, verify_bytes
from modelstream.runner import Managed
from modelstream.settings import Settings

log = logging.getLogger(__name__)
# Read again by every caller of load_production (the trainer at each training): a bad record
# would be logged at each reading.
_refused = quiet_log(log, "registry refused")


def public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The key artifacts must verify against: MODELSTREAM_PUBLIC_KEY_FILE, else the one in
    the keys directory (``<state dir>/keys/`` unless set, where `modelstream up` and
    `keys generate` put it), else none."""
    path = settings.public_key_file
    if path is None:
        default = settings.key_directory / PUBLIC_KEY_NAME
        path = default if default.exists() else None
    return load_public_key(path) if path is not None else None


async def load_production(
    settings: Settings, key: Ed25519PublicKey | None = None, *, allow_unsigned: bool | None = None
) -> dict[str, Verified]:
    """The newest verified artifact per model on ``models``; a record that fails
    verification is skipped (the previous good one stays)."""
    allow = settings.allow_unsigned if allow_unsigned is None else allow_unsigned
    out: dict[str, Verified] = {}
    async for record in read_to_end(settings, settings.topic(MODELS)):
        try:
            verified = verify_bytes(record.value, key, allow_unsigned=allow)
        except Exception as exc:
            failure = record_failure(exc)
            if failure is None:
                raise
            _refused.warn(
                logical_topic(record.topic),
                failure.reason,
                "registry record %d refused: %s",
                record.offset,
                failure.error,
            )
            continue
        out[verified.body["name"]] = verified
    return out


async def load_history(settings: Settings) -> dict[tuple[str, int], ModelArtifact]:
    """Every published artifact record by (name, version), as written (not re-verified)."""
    codec = default_codec()
    out: dict[tuple[str, int], ModelArtifact] = {}
    async for record in read_to_end(settings, settings.topic(MODEL_HISTORY)):
        try:
            artifact = codec.decode(record.value, ModelArtifact, INTERNAL)
        except Exception as exc:
            if record_failure(exc) is None:
                raise
            continue
        body = artifact["body"]
        out[(body["name"], body["version"])] = artifact
    return out


async def load_verified_history(
    settings: Settings, key: Ed25519PublicKey | None, *, allow_unsigned: bool
) -> list[ModelArtifact]:
    """The published artifact records that verify against the publisher's ``key`` (each
    under the schema that wrote it); the others are skipped."""
    out: list[ModelArtifact] = []
    async for record in read_to_end(settings, settings.topic(MODEL_HISTORY)):
        try:
            out.append(verify_bytes(record.value, key, allow_unsigned=allow_unsigned).record)
        except Exception as exc:
            if record_failure(exc) is None:
                raise
    return out


def model_of_key(key: bytes | None) -> str:
    """The model a registry record's key names (``name`` or ``name:version``), when it is a
    valid model name; "" otherwise (a hostile key must not become a label or a key)."""
    name = key.decode(errors="replace").split(":")[0] if key else ""
    return name if 0 < len(name) <= MAX_NAME and name.isprintable() else ""


def latest_versions(history: Mapping[tuple[str, int], object]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for name, version in history:
        latest[name] = max(version, latest.get(name, 0))
    return latest


class ProductionFollower(Managed):
    """Follows ``models``: the verified production artifact of every model, kept current.

    Use with ``async with``; ``load()`` reads the registry to its end; ``poll()`` applies
    what arrived since and returns the names whose production artifact changed. Records that
    fail verification are counted in ``refused`` and leave the previous version in place."""

    def __init__(self, settings: Settings, key: Ed25519PublicKey | None, service: str) -> None:
        self._settings = settings
        self._key = key
        self._consumer = make_consumer(settings, group_id=None, fetch_max_wait_ms=50)
        self.production: dict[str, Verified] = {}
        self.refused: list[tuple[str, str]] = []  # (model, reason), drained by the owner
        self._boundary = Boundary(service)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def load(self) -> None:
        tps = await partitions_of(self._consumer, self._settings.topic(MODELS))
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        for tp in tps:
            while await self._consumer.position(tp) < ends[tp]:
                await self.poll(timeout_ms=500)

    async def poll(self, timeout_ms: int = 0) -> set[str]:
        changed: set[str] = set()
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                self._boundary.read(record.topic)
                try:
                    verified = verify_bytes(
                        record.value, self._key, allow_unsigned=self._settings.allow_unsigned
                    )
                except Exception as exc:
                    failure = self._boundary.failure(exc)  # infrastructure errors propagate
                    self._boundary.reject(record.topic, record.partition, record.offset, failure)
                    self.refused.append((model_of_key(record.key), failure.error))
                    continue
                name = verified.body["name"]
                current = self.production.get(name)
                if current is None or current.record["digest"] != verified.record["digest"]:
                    self.production[name] = verified
                    changed.add(name)
        return changed
