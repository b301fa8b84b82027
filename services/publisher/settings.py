"""Publisher settings."""

from __future__ import annotations

from pydantic import Field

from modelstream.settings import Settings


class PublisherSettings(Settings):
    metrics_port: int = Field(default=9103, ge=0, le=65535)
