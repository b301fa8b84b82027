"""Runs one service until SIGINT/SIGTERM: start, run, then a clean stop; exit code 0."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from modelstream.kafka.quiet import flush_all, set_interval
from modelstream.settings import ServiceSettings, load
from modelstream.telemetry import Health, serve

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

    def request_stop(self) -> None: ...


C = TypeVar("C")


class Managed:
    """Something used with ``async with``: entering starts it, leaving stops it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class Lifecycle:
    """What every service app shares: a stop request, and the clients it owns, closed in the
    reverse order of opening when the service stops (also when its start failed halfway)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._owned = AsyncExitStack()

    def request_stop(self) -> None:
        self.stopping.set()

    async def own(self, client: AbstractAsyncContextManager[C]) -> C:
        """Enter ``client`` (start it) and close it when the service stops."""
        return await self._owned.enter_async_context(client)

    async def stop(self) -> None:
        await self._owned.aclose()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


# Exit codes of `modelstream run`: a supervisor restarts on anything but 0.
EXIT_STOPPED = 0
EXIT_FAILED = 1  # start failed, or the processing loop died
EXIT_HUNG = 3  # the event loop stopped ticking (blocked); the watchdog ended the process


def run_service(make: Callable[[], Service], health: Health, watchdog_s: float = 0.0) -> int:
    """Build the service inside the event loop (aiokafka clients need one), run it until
    SIGINT/SIGTERM, then stop it cleanly; returns the exit code.

    A processing loop that raises is a dead service: it reports not-ready, stops, and the
    process exits with EXIT_FAILED so that its supervisor restarts it. With ``watchdog_s``,
    a thread ends the process (EXIT_HUNG) when the event loop has not ticked for that long."""

    async def main() -> int:
        service = make()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.request_stop)
        ticker = asyncio.create_task(_tick(health))
        try:
            try:
                await service.start()
            except Exception as exc:
                health.fail(f"start failed: {type(exc).__name__}: {exc}")
                log.critical("%s could not start", health.service, exc_info=exc)
                return EXIT_FAILED
            health.set_started()
            try:
                await service.run()
            except Exception as exc:
                health.fail(f"processing loop died: {type(exc).__name__}: {exc}")
                log.critical("%s: its processing loop died", health.service, exc_info=exc)
                return EXIT_FAILED
            return EXIT_STOPPED
        finally:
            health.set_stopping()
            ticker.cancel()
            await service.stop()
            flush_all()  # the last interval's counts

    if watchdog_s > 0:
        threading.Thread(
            target=_watchdog, args=(health, watchdog_s), daemon=True, name="watchdog"
        ).start()
    return asyncio.run(main())


async def _tick(health: Health) -> None:
    while True:
        health.tick()
        flush_all(if_due=True)  # a flood that stopped still gets its summary
        await asyncio.sleep(1.0)


def _watchdog(health: Health, limit_s: float) -> None:
    while True:
        time.sleep(min(5.0, limit_s / 4))
        if time.monotonic() - health.last_tick > limit_s:
            log.critical(
                "%s: the event loop has not ticked for %.0f s; exiting so that the "
                "supervisor restarts it",
                health.service,
                limit_s,
            )
            os._exit(EXIT_HUNG)


def service_main(settings_cls: type[ServiceSettings], app_cls: Callable[[Any], Service]) -> None:
    """Entry point of `modelstream run <service>`: settings, logging, /metrics and health
    endpoints, run until signalled, exit with the service's code."""
    settings = load(settings_cls)
    configure_logging(settings.log_level)
    set_interval(settings.log_summary_s)
    health = Health(settings.service, stale_after_s=settings.watchdog_s or 60.0)
    serve(settings.metrics_port, settings.metrics_host, health)
    sys.exit(run_service(lambda: app_cls(settings), health, settings.watchdog_s))
