"""Validator settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from modelstream.settings import ServiceSettings, metrics_port_field


class ValidatorSettings(ServiceSettings):
    service: ClassVar[str] = "validator"

    validator_metrics_port: int = metrics_port_field(9102)
    holdout_size: int = Field(
        default=1000,
        ge=10,
        description="Newest labelled examples used to judge fixed-weight (online, imported) "
        "candidates against the champion.",
    )
    holdout_scan: int = Field(
        default=20000, ge=100, description="Newest records per partition scanned for the holdout."
    )
