"""`modelstream topics ...`: provision and inspect the topology."""

from __future__ import annotations

import asyncio

import typer

from modelstream.cli.common import kafka_settings

app = typer.Typer(help="Provision and inspect modelstream's topics.", no_args_is_help=True)


@app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every modelstream topic (idempotent: existing topics keep their data)."""
    from modelstream.kafka.topology import create_topics

    settings = kafka_settings(ctx)
    report = asyncio.run(create_topics(settings))
    typer.echo(
        f"topics on {settings.bootstrap}: {len(report.created)} created, "
        f"{len(report.existing)} already present"
        + (f", grown: {', '.join(report.grown)}" if report.grown else "")
    )


@app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """Show every declared topic with its partitions, replication and configs."""
    from modelstream.kafka.topology import TOPOLOGY, describe_topics

    settings = kafka_settings(ctx)
    described = asyncio.run(describe_topics(settings))
    for spec in TOPOLOGY:
        name = settings.topic(spec.name)
        info = described.get(name)
        if info is None:
            typer.echo(f"{name:40} MISSING")
            continue
        configs = " ".join(f"{k}={v}" for k, v in sorted(info.config.items()))
        typer.echo(
            f"{name:40} partitions={info.partitions} rf={info.replication_factor} "
            f"key={spec.key!r} value={spec.value} {configs}"
        )
