"""What every command module shares: the settings of the invocation and the service names."""

from __future__ import annotations

import asyncio
from typing import Any

import typer

from modelstream.cli.failures import silence_clients
from modelstream.settings import Settings, load

SERVICES = ("trainer", "validator", "publisher", "predictor", "monitor", "gateway")


class Context:
    """One invocation: the settings overrides of the global flags, turned into Settings on
    first use (kept, so that a failure can name the brokers), and ``--debug``."""

    def __init__(self, overrides: dict[str, object] | None = None, debug: bool = False) -> None:
        self.overrides = overrides or {}
        self.debug = debug
        self.used: Settings | None = None

    def settings(self, cls: type[Settings] = Settings, **more: object) -> Settings:
        self.used = load(cls, **{**self.overrides, **more})
        return self.used


def settings_of(ctx: typer.Context, **more: Any) -> Settings:
    """The settings of this invocation: environment, global flags, then ``more``."""
    return _invocation(ctx).settings(**more)


def kafka_settings(ctx: typer.Context, **more: Any) -> Settings:
    """The settings of a command that talks to Kafka, once the bootstrap servers have
    answered within ``MODELSTREAM_CONNECT_TIMEOUT_S``: a broker that is down, unreachable
    or refuses the credentials ends the command in seconds, with its cause (see
    ``failures``), where a client's own start would retry for 40 s and say only "Unable to
    bootstrap"."""
    from modelstream.kafka.clients import reach

    invocation = _invocation(ctx)
    settings = invocation.settings(**more)
    if not invocation.debug:  # the clients' own log lines would come on top of the one
        silence_clients()
    asyncio.run(reach(settings, settings.connect_timeout_s))
    return settings


def _invocation(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    if not isinstance(obj, Context):
        raise RuntimeError("modelstream commands run under the root callback")
    return obj


def csv_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated option as a tuple, blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()
