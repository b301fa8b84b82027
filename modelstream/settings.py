"""One settings object for every service and command.

Values come from ``MODELSTREAM_*`` environment variables (and CLI flags, which the CLI
writes into the same object). Service-specific settings subclass :class:`Settings`.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    instance_id: str = Field(
        default="0", description="Distinguishes copies of one service (transactional ids)."
    )
    public_key_file: Path | None = Field(
        default=None, description="Ed25519 public key (PEM) that artifacts must verify against."
    )
    private_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM); only the publisher needs it."
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 disables /metrics.")
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics listens on.")
    allow_unsigned: bool = Field(
        default=False, description="Accept unsigned artifacts (development only)."
    )
    data_key_file: Path | None = Field(
        default=None, description="32-byte AES-256 data key (raw or hex) for encrypted weights."
    )
    log_level: str = Field(default="INFO")
    security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="Kafka security protocol of every client.",
    )
    sasl_mechanism: str = Field(default="SCRAM-SHA-512",
                                pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$")
    sasl_username: str | None = Field(default=None, description="This service's principal.")
    sasl_password: str | None = Field(default=None)
    ssl_ca_file: Path | None = Field(default=None, description="CA that signed the brokers.")

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers is None

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


S = TypeVar("S", bound=Settings)


def load(cls: type[S] = Settings, **overrides: object) -> S:  # type: ignore[assignment]
    """Build settings from the environment plus explicit overrides; one-line error on failure."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        env = f"MODELSTREAM_{field.upper()}"
        raise ConfigurationError(f"invalid setting {env}: {first['msg']}") from None
