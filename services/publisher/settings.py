"""Publisher settings."""

from __future__ import annotations

from typing import ClassVar

from modelstream.settings import ServiceSettings, metrics_port_field


class PublisherSettings(ServiceSettings):
    service: ClassVar[str] = "publisher"

    publisher_metrics_port: int = metrics_port_field(9103)
