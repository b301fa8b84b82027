"""Validator settings."""

from __future__ import annotations

from pydantic import Field

from modelstream.settings import Settings


class ValidatorSettings(Settings):
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    holdout_size: int = Field(
        default=1000, ge=10,
        description="Newest labelled examples used to judge fixed-weight (online, imported) "
        "candidates against the champion.",
    )
    holdout_scan: int = Field(
        default=20000, ge=100, description="Newest records per partition scanned for the holdout."
    )
