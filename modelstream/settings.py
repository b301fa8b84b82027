"""One settings object for every service and command.

Values come from ``MODELSTREAM_*`` environment variables (and CLI flags, which the CLI
writes into the same object). Service-specific settings subclass :class:`ServiceSettings`;
a setting whose meaning or default differs by service carries the service in its name
(``MODELSTREAM_PREDICTOR_METRICS_PORT``). Durations are in seconds (``*_s``), sizes in
their unit (``*_mb``), secrets are ``SecretStr`` (never printed).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelstream.contracts.limits import Limits
from modelstream.errors import ConfigurationError


class OutputFormat(StrEnum):
    AVRO = "avro"
    JSON = "json"


class Settings(BaseSettings):
    """Settings shared by every modelstream process."""

    model_config = SettingsConfigDict(env_prefix="MODELSTREAM_", extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers; unset means the embedded broker on loopback.",
    )
    broker_host: str = Field(default="127.0.0.1", description="Embedded broker listen address.")
    broker_port: int = Field(default=9092, ge=1, le=65535, description="Embedded broker port.")
    broker_heap_mb: int = Field(default=512, ge=128, description="Embedded broker JVM heap.")
    state_dir: Path = Field(
        default=Path(".modelstream"), description="Broker data, logs, pids and keys."
    )
    kafka_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "modelstream" / "kafka",
        description="Where the broker jars resolved by Maven are cached.",
    )
    topic_prefix: str = Field(default="modelstream.", description="Prefix of every topic name.")
    replication_factor: int = Field(default=1, ge=1)
    output_format: OutputFormat = Field(
        default=OutputFormat.AVRO, description="Encoding of output topics: avro or json."
    )
    client_id: str = Field(default="modelstream")
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Commands: how long the bootstrap servers have to answer (connection, "
        "TLS, SASL, metadata) before the command gives up in one line.",
    )
    instance_id: str = Field(
        default="0", description="Distinguishes copies of one service (transactional ids)."
    )
    public_key_file: Path | None = Field(
        default=None, description="Ed25519 public key (PEM) that artifacts must verify against."
    )
    private_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM); only the publisher needs it."
    )
    keys_dir: Path | None = Field(
        default=None,
        description="Where the keys are: the makers' public keys (`<maker>.pub`, "
        "`<maker>.<tag>.pub`; trainer, monitor, importer) that candidates must verify "
        "against and, by "
        "default, this maker's private key `<maker>.key` (default: the directory of "
        "MODELSTREAM_PUBLIC_KEY_FILE or MODELSTREAM_PRIVATE_KEY_FILE, else <state dir>/keys).",
    )
    candidate_key_file: Path | None = Field(
        default=None,
        description="This maker's Ed25519 private key (PEM) that signs its candidates "
        "(default: <keys dir>/<maker>.key: trainer, monitor or importer).",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics listens on.")
    allow_unsigned: bool = Field(
        default=False, description="Accept unsigned artifacts (development only)."
    )
    data_key_file: Path | None = Field(
        default=None, description="32-byte AES-256 data key (raw or hex) for encrypted weights."
    )
    log_level: str = Field(default="INFO")
    security_protocol: str = Field(
        default="PLAINTEXT",
        pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="Kafka security protocol of every client.",
    )
    sasl_mechanism: str = Field(
        default="SCRAM-SHA-512", pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    sasl_username: str | None = Field(default=None, description="This service's principal.")
    sasl_password: SecretStr | None = Field(default=None)
    ssl_ca_file: Path | None = Field(default=None, description="CA that signed the brokers.")
    # What a decoded input may hold (see modelstream.contracts.limits).
    max_message_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest record value accepted on an input (the requests and training "
        "topics take records up to this size: a 1 MB image with room to spare).",
    )
    max_json_depth: int = Field(default=32, ge=2, description="Deepest JSON nesting accepted.")
    max_string_chars: int = Field(default=65_536, ge=256)
    max_items: int = Field(default=100_000, ge=100, description="Entries of one array or map.")

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def key_directory(self) -> Path:
        if self.keys_dir is not None:
            return self.keys_dir
        for key_file in (self.public_key_file, self.private_key_file):
            if key_file is not None:
                return key_file.parent
        return self.state_dir / "keys"

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.broker_host}:{self.broker_port}"

    def topic(self, logical_name: str) -> str:
        return f"{self.topic_prefix}{logical_name}"

    def group(self, service: str) -> str:
        """Consumer group of a service; prefixed so separate deployments never share one."""
        return f"{self.topic_prefix}{service}"

    def transactional_id(self, service: str) -> str:
        return f"{self.topic_prefix}{service}-{self.instance_id}"

    def limits(self) -> Limits:
        return Limits(
            max_bytes=self.max_message_bytes,
            max_json_depth=self.max_json_depth,
            max_string_chars=self.max_string_chars,
            max_items=self.max_items,
        )

    def data_key(self) -> tuple[bytes, str] | None:
        """The AES-256 data key and its id (SHA-256 prefix), when one is configured."""
        if self.data_key_file is None:
            return None
        try:
            raw = self.data_key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read data key {self.data_key_file}: {exc}") from None
        key = bytes.fromhex(raw.decode()) if len(raw) == 64 else raw
        if len(key) != 32:
            raise ConfigurationError("the data key must be 32 bytes (or 64 hex characters)")
        return key, hashlib.sha256(key).hexdigest()[:16]


class ServiceSettings(Settings):
    """Settings of one service; its /metrics port is ``MODELSTREAM_<SERVICE>_METRICS_PORT``
    (each service has its own default, so several run on one host)."""

    service: ClassVar[str]

    watchdog_s: float = Field(
        default=60.0,
        ge=0,
        description="Exit (to be restarted) when the event loop has not "
        "ticked for this long; 0 turns the watchdog off.",
    )
    log_summary_s: float = Field(
        default=10.0,
        gt=0,
        description="Per-record warnings (rejected records) are logged in full for the first "
        "of each topic and reason, then as one line of counts per this many seconds.",
    )

    @property
    def metrics_port(self) -> int:
        """The port of this service's /metrics and health endpoints (0 disables them)."""
        port: int = getattr(self, f"{self.service}_metrics_port")
        return port


def metrics_port_field(default: int) -> int:
    return Field(default=default, ge=0, le=65535, description="/metrics port (0 = off).")


S = TypeVar("S", bound=Settings)


@overload
def load(cls: None = None, **overrides: object) -> Settings: ...


@overload
def load(cls: type[S], **overrides: object) -> S: ...


def load(cls: type[Settings] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (None values are left to
    the environment); a one-line error on a bad value. Overrides name fields of ``cls``:
    a misspelt one is a bug, not something to ignore."""
    target = cls or Settings
    unknown = sorted(set(overrides) - set(target.model_fields))
    if unknown:
        raise TypeError(f"{target.__name__} has no setting(s) {unknown}")
    clean: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    try:
        return target(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        env = f"MODELSTREAM_{field.upper()}"
        raise ConfigurationError(f"invalid setting {env}: {first['msg']}") from None
