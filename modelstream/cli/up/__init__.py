"""`modelstream up`: the whole pipeline on one machine, watched from one terminal.

:mod:`.stack` starts the broker, topics, keys and one process per service; :mod:`.live`
renders the screen from their ``/metrics``; :mod:`.demo` plays a data set through it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from modelstream.cli.common import settings_of
from modelstream.cli.up.demo import DEMOS, drive_demo
from modelstream.cli.up.live import LiveView
from modelstream.cli.up.stack import Stack
from modelstream.errors import ConfigurationError
from modelstream.telemetry import serve

app = typer.Typer()


@app.command("up")
def up(
    ctx: typer.Context,
    demo: Annotated[
        str | None, typer.Option(help="Also drive real traffic: breast-cancer or digits.")
    ] = None,
    predictors: Annotated[int, typer.Option(min=1, max=8, help="Predictor processes.")] = 2,
    requests: Annotated[int, typer.Option(min=1, help="Demo: requests to send.")] = 5000,
    rate: Annotated[float, typer.Option(min=1, help="Demo: requests per second.")] = 100.0,
    label_delay: Annotated[
        float,
        typer.Option(min=0, help="Demo: seconds between a request and its label on `feedback`."),
    ] = 2.0,
    refresh: Annotated[float, typer.Option(min=0.2, help="Seconds between screens.")] = 1.0,
    metrics_base_port: Annotated[
        int,
        typer.Option(
            help="trainer's /metrics port; the others follow (predictor +3, monitor +4, "
            "gateway +5, `up` itself +9, further predictors +10+i)."
        ),
    ] = 9101,
    gateway_port: Annotated[
        int, typer.Option(help="The inference gateway's HTTP port (0: any free port).")
    ] = 8080,
) -> None:
    """Start the broker (unless MODELSTREAM_BOOTSTRAP_SERVERS is set), the topics and every
    service, and watch them live; Ctrl-C stops everything."""
    if demo is not None and demo not in DEMOS:
        raise typer.BadParameter(f"unknown demo {demo!r}; choose from {', '.join(DEMOS)}")
    if demo is not None and importlib.util.find_spec("sklearn") is None:
        raise ConfigurationError(
            "the demo plays scikit-learn's bundled data sets: pip install 'modelstream[demo]'"
        )
    stack = Stack(
        settings_of(ctx),
        predictors=predictors,
        metrics_base_port=metrics_base_port,
        gateway_port=gateway_port,
    )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        stack.start(typer.echo)
        # `up`'s own /metrics: the restarts of its children.
        serve(metrics_base_port + 9, stack.settings.metrics_host)
        asyncio.run(
            run_up(
                stack, demo, requests, rate, label_delay, refresh, write, tty=sys.stdout.isatty()
            )
        )
    finally:
        stack.stop(typer.echo)


async def run_up(
    stack: Stack,
    demo: str | None,
    requests: int,
    rate: float,
    label_delay_s: float,
    refresh_s: float,
    write: Callable[[str], None],
    tty: bool,
) -> None:
    """Render the view until SIGINT/SIGTERM, driving the demo alongside when asked, and
    restart what exits meanwhile: only Ctrl-C (or SIGTERM) stops the stack."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    view = LiveView(stack)

    def report(text: str) -> None:
        view.status = text

    demo_task = None
    if demo is not None:
        demo_task = asyncio.create_task(
            drive_demo(stack.settings, demo, requests, rate, label_delay_s, stop, report)
        )
    try:
        while not stop.is_set():
            frame = await asyncio.to_thread(view.frame)
            write(("\x1b[H\x1b[2J" if tty else "\n") + frame + "\n")
            failure = demo_task.exception() if demo_task is not None and demo_task.done() else None
            if failure is not None:
                raise failure
            stack.supervise(view.note)
            try:
                await asyncio.wait_for(stop.wait(), refresh_s)
            except TimeoutError:
                pass
    finally:
        stop.set()
        if demo_task is not None:
            await asyncio.gather(demo_task, return_exceptions=True)
        write("\nfinal state:\n" + await asyncio.to_thread(view.frame) + "\n")
