"""`modelstream broker ...`: the embedded Apache Kafka broker."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from modelstream.cli.common import settings_of

app = typer.Typer(help="The embedded Apache Kafka broker (KRaft, loopback).", no_args_is_help=True)


@app.command("start")
def broker_start(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(help="Client port of the first node.", envvar="MODELSTREAM_BROKER_PORT"),
    ] = None,
    brokers: Annotated[int, typer.Option(min=1, max=5, help="Number of KRaft nodes.")] = 1,
) -> None:
    """Fetch Kafka (once), format storage, start the broker and wait until it answers."""
    from modelstream.ops.broker import EmbeddedCluster

    cluster = EmbeddedCluster(settings_of(ctx, broker_port=port), node_count=brokers)
    started = cluster.start()
    verb = "started" if started else "already running"
    typer.echo(f"broker {verb} at {cluster.bootstrap} (state: {cluster.root})")


@app.command("stop")
def broker_stop(ctx: typer.Context) -> None:
    """Stop the embedded broker cleanly (no-op when it is not running)."""
    from modelstream.ops.broker import EmbeddedCluster

    stopped = EmbeddedCluster(settings_of(ctx)).stop()
    typer.echo(f"broker stopped ({len(stopped)} node(s))" if stopped else "broker not running")


@app.command("status")
def broker_status(ctx: typer.Context) -> None:
    """Say whether the embedded broker runs, where, and whether it answers."""
    from modelstream.ops.broker import EmbeddedCluster, fetch_broker_ids

    cluster = EmbeddedCluster(settings_of(ctx))
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
