"""The ``modelstream`` command line."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelstream.errors import ConfigurationError, ModelstreamError
from modelstream.models_cli import models_app
from modelstream.ops_cli import register as register_ops_commands
from modelstream.settings import Settings, load

app = typer.Typer(
    help="Kafka-native machine-learning model lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
broker_app = typer.Typer(help="The embedded Apache Kafka broker (KRaft, loopback).",
                         no_args_is_help=True)
topics_app = typer.Typer(help="Provision and inspect modelstream's topics.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
keys_app = typer.Typer(help="Ed25519 keys that sign and verify model artifacts.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
register_ops_commands(app)

SERVICES = ("trainer", "validator", "publisher", "predictor", "monitor")


class Context:
    """Settings overrides from global flags, turned into Settings on first use."""

    def __init__(self, overrides: dict[str, object]) -> None:
        self.overrides = overrides

    def settings(self, cls: type[Settings] = Settings, **more: object) -> Settings:
        return load(cls, **{**self.overrides, **more})


def _ctx(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


@app.callback()
def main_options(
    ctx: typer.Context,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (default: the embedded broker).",
                                 envvar="MODELSTREAM_BOOTSTRAP_SERVERS", show_envvar=True)
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Directory for broker data, logs, pids and keys.",
                                  envvar="MODELSTREAM_STATE_DIR", show_envvar=True)
    ] = None,
    topic_prefix: Annotated[
        str | None, typer.Option(help="Prefix of every topic name.",
                                 envvar="MODELSTREAM_TOPIC_PREFIX", show_envvar=True)
    ] = None,
) -> None:
    ctx.obj = Context(
        {"bootstrap_servers": bootstrap_servers, "state_dir": state_dir,
         "topic_prefix": topic_prefix}
    )


@broker_app.command("start")
def broker_start(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Client port of the first node.",
                                             envvar="MODELSTREAM_BROKER_PORT")] = None,
    brokers: Annotated[int, typer.Option(min=1, max=5, help="Number of KRaft nodes.")] = 1,
) -> None:
    """Fetch Kafka (once), format storage, start the broker and wait until it answers."""
    from modelstream.broker import EmbeddedCluster

    settings = _ctx(ctx).settings(broker_port=port)
    cluster = EmbeddedCluster(settings, node_count=brokers)
    started = cluster.start()
    verb = "started" if started else "already running"
    typer.echo(f"broker {verb} at {cluster.bootstrap} (state: {cluster.root})")


@broker_app.command("stop")
def broker_stop(ctx: typer.Context) -> None:
    """Stop the embedded broker cleanly (no-op when it is not running)."""
    from modelstream.broker import EmbeddedCluster

    cluster = EmbeddedCluster(_ctx(ctx).settings())
    stopped = cluster.stop()
    typer.echo(f"broker stopped ({len(stopped)} node(s))" if stopped else "broker not running")


@broker_app.command("status")
def broker_status(ctx: typer.Context) -> None:
    """Say whether the embedded broker runs, where, and whether it answers."""
    from modelstream.broker import EmbeddedCluster, fetch_broker_ids

    cluster = EmbeddedCluster(_ctx(ctx).settings())
    running = cluster.running_nodes()
    for node in cluster.nodes:
        pid = node.pid()
        state = f"running (pid {pid})" if pid else "stopped"
        typer.echo(f"node {node.node_id}: {node.address} {state}")
    if not running:
        raise typer.Exit(code=3)
    try:
        ids = asyncio.run(fetch_broker_ids(cluster.bootstrap))
        typer.echo(f"metadata: {len(ids)} broker(s) registered {ids}")
    except Exception as exc:
        typer.echo(f"metadata: no answer ({type(exc).__name__})")
        raise typer.Exit(code=4) from None


@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every modelstream topic (idempotent: existing topics keep their data)."""
    from modelstream.topics import create_topics

    settings = _ctx(ctx).settings()
    report = asyncio.run(create_topics(settings))
    typer.echo(
        f"topics on {settings.bootstrap}: {len(report.created)} created, "
        f"{len(report.existing)} already present"
        + (f", grown: {', '.join(report.grown)}" if report.grown else "")
    )


@topics_app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """Show every declared topic with its partitions, replication and configs."""
    from modelstream.topics import TOPOLOGY, describe_topics

    settings = _ctx(ctx).settings()
    described = asyncio.run(describe_topics(settings))
    for spec in TOPOLOGY:
        name = settings.topic(spec.name)
        info = described.get(name)
        if info is None:
            typer.echo(f"{name:40} MISSING")
            continue
        configs = " ".join(f"{k}={v}" for k, v in sorted(info["config"].items()))  # type: ignore[union-attr]
        typer.echo(
            f"{name:40} partitions={info['partitions']} rf={info['replication_factor']} "
            f"key={spec.key!r} value={spec.value} {configs}"
        )


@keys_app.command("generate")
def keys_generate(
    ctx: typer.Context,
    out_dir: Annotated[Path | None, typer.Option(help="Directory (default: <state-dir>/keys).")]
    = None,
    keep_existing: Annotated[bool, typer.Option(help="Keep a pair that already exists.")] = False,
) -> None:
    """Make a key pair: the publisher holds the private key, every consumer the public one."""
    from modelstream.artifact import generate_keys, key_id, load_public_key

    target = out_dir or _ctx(ctx).settings().state_dir / "keys"
    private_path, public_path = generate_keys(target, keep_existing=keep_existing)
    typer.echo(f"private key: {private_path} (give only to the publisher)")
    typer.echo(f"public key:  {public_path} (key id {key_id(load_public_key(public_path))})")
    typer.echo(f"export MODELSTREAM_PRIVATE_KEY_FILE={private_path}")
    typer.echo(f"export MODELSTREAM_PUBLIC_KEY_FILE={public_path}")


@app.command("run")
def run_service(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    module = importlib.import_module(f"modelstream.services.{service}.__main__")
    module.main()


@app.command("up")
def up(
    ctx: typer.Context,
    demo: Annotated[str | None, typer.Option(
        help="Also drive real traffic: breast-cancer or digits.")] = None,
    predictors: Annotated[int, typer.Option(min=1, max=8, help="Predictor processes.")] = 2,
    requests: Annotated[int, typer.Option(min=1, help="Demo: requests to send.")] = 5000,
    rate: Annotated[float, typer.Option(min=1, help="Demo: requests per second.")] = 100.0,
    label_delay: Annotated[float, typer.Option(
        min=0, help="Demo: seconds between a request and its label on `feedback`.")] = 2.0,
    refresh: Annotated[float, typer.Option(min=0.2, help="Seconds between screens.")] = 1.0,
    metrics_base_port: Annotated[int, typer.Option(
        help="trainer's /metrics port; the others follow (predictor +3, monitor +4, "
             "further predictors +10+i).")] = 9101,
) -> None:
    """Start the broker (unless MODELSTREAM_BOOTSTRAP_SERVERS is set), the topics and every
    service, and watch them live; Ctrl-C stops everything."""
    from modelstream.up import DEMOS, Stack, run_up

    if demo is not None and demo not in DEMOS:
        raise typer.BadParameter(f"unknown demo {demo!r}; choose from {', '.join(DEMOS)}")
    if demo is not None and importlib.util.find_spec("sklearn") is None:
        raise ConfigurationError("the demo plays scikit-learn's bundled data sets: "
                                 "pip install 'modelstream[demo]'")
    stack = Stack(_ctx(ctx).settings(), predictors=predictors,
                  metrics_base_port=metrics_base_port)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        stack.start(typer.echo)
        asyncio.run(run_up(stack, demo, requests, rate, label_delay, refresh, write,
                           tty=sys.stdout.isatty()))
    finally:
        stack.stop(typer.echo)


def main() -> None:
    """Entry point: clear one-line errors for expected failures, tracebacks only for bugs."""
    try:
        app()
    except ModelstreamError as exc:
        typer.echo(f"modelstream: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
