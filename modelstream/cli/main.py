"""The ``modelstream`` command line: global options, and one module per command group."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelstream.cli import broker, data, keys, models, topics, up
from modelstream.cli.common import SERVICES, Context
from modelstream.cli.failures import explain, silence_clients

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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="On failure, the traceback and the clients' logs, not only the one line.",
            envvar="MODELSTREAM_DEBUG",
            show_envvar=True,
        ),
    ] = False,
) -> None:
    invocation = ctx.ensure_object(Context)  # main() passes its own; CliRunner does not
    invocation.overrides = {
        "bootstrap_servers": bootstrap_servers,
        "state_dir": state_dir,
        "topic_prefix": topic_prefix,
    }
    invocation.debug = debug


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
    """Entry point: a command that fails says so in one line (``failures``); the traceback
    only with --debug."""
    invocation = Context()
    try:
        app(obj=invocation)
    except Exception as exc:
        if invocation.debug:
            raise
        failure = explain(exc, invocation.used)
        silence_clients()
        typer.echo(failure.line, err=True)
        sys.exit(failure.exit_code)
