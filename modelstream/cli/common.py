"""What every command module shares: the settings of the invocation and the service names."""

from __future__ import annotations

from typing import Any

import typer

from modelstream.settings import Settings, load

SERVICES = ("trainer", "validator", "publisher", "predictor", "monitor", "gateway")


class Context:
    """Settings overrides from the global flags, turned into Settings on first use."""

    def __init__(self, overrides: dict[str, object]) -> None:
        self.overrides = overrides

    def settings(self, cls: type[Settings] = Settings, **more: object) -> Settings:
        return load(cls, **{**self.overrides, **more})


def settings_of(ctx: typer.Context, **more: Any) -> Settings:
    """The settings of this invocation: environment, global flags, then ``more``."""
    obj = ctx.find_root().obj
    if not isinstance(obj, Context):
        raise RuntimeError("modelstream commands run under the root callback")
    return obj.settings(**more)


def csv_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated option as a tuple, blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()
