"""Gateway settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from modelstream.settings import ServiceSettings, metrics_port_field


class GatewaySettings(ServiceSettings):
    service: ClassVar[str] = "gateway"

    gateway_metrics_port: int = metrics_port_field(9106)
    gateway_host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    gateway_port: int = Field(default=8080, ge=0, le=65535, description="HTTP port.")
    gateway_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A call whose predictions have not all arrived by then "
        "is answered 504 with its request ids.",
    )
    gateway_max_rows: int = Field(default=10_000, ge=1, description="Rows of one call.")
    gateway_max_body_bytes: int = Field(
        default=64 << 20, ge=1024, description="A larger call body is answered 413."
    )
    gateway_max_in_flight: int = Field(
        default=2_000,
        ge=1,
        description="Calls waiting for answers at once; past it a call is answered 429 at "
        "once (with Retry-After) instead of queueing into timeouts.",
    )
    gateway_read_committed: bool = Field(
        default=False,
        description="Read replies read_committed: the answer is then the committed "
        "prediction, at the cost of waiting for the predictor's transaction.",
    )
    gateway_new_partition_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A partition added to `replies` is named in calls this long after this "
        "copy first owns it: predictors look for added partitions every 10 s.",
    )
    gateway_metadata_refresh_s: float = Field(
        default=10.0,
        gt=0,
        description="How often partitions added to `replies` are looked for.",
    )
    gateway_token: SecretStr | None = Field(
        default=None,
        description="When set, every call but the health checks needs "
        "`Authorization: Bearer <token>`.",
    )
    gateway_tls_cert_file: Path | None = Field(default=None, description="HTTPS certificate.")
    gateway_tls_key_file: Path | None = Field(default=None, description="Its private key.")
    gateway_tls_client_ca_file: Path | None = Field(
        default=None, description="Require client certificates signed by this CA (mTLS)."
    )
