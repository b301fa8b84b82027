"""The ``modelstream`` command line: global options, and one module per command group."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelstream.cli import broker, data, keys, models, topics, up
from modelstream.cli.common import SERVICES, Context
from modelstream.errors import ModelstreamError

app = typer.Typer(
    help="Kafka-native machine-learning model lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(broker.app, name="broker")
app.add_typer(topics.app, name="topics")
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.add_typer(data.app)  # send, tail, status
app.add_typer(up.app)  # up


@app.callback()
def main_options(
    ctx: typer.Context,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers (default: the embedded broker).",
            envvar="MODELSTREAM_BOOTSTRAP_SERVERS",
            show_envvar=True,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory for broker data, logs, pids and keys.",
            envvar="MODELSTREAM_STATE_DIR",
            show_envvar=True,
        ),
    ] = None,
    topic_prefix: Annotated[
        str | None,
        typer.Option(
            help="Prefix of every topic name.", envvar="MODELSTREAM_TOPIC_PREFIX", show_envvar=True
        ),
    ] = None,
) -> None:
    ctx.obj = Context(
        {
            "bootstrap_servers": bootstrap_servers,
            "state_dir": state_dir,
            "topic_prefix": topic_prefix,
        }
    )


@app.command("run")
def run_service(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    module = importlib.import_module(f"modelstream.services.{service}.__main__")
    module.main()


def main() -> None:
    """Entry point: clear one-line errors for expected failures, tracebacks only for bugs."""
    try:
        app()
    except ModelstreamError as exc:
        typer.echo(f"modelstream: error: {exc}", err=True)
        sys.exit(2)
