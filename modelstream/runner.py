"""Runs one service until SIGINT/SIGTERM: start, run, then a clean stop; exit code 0."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from modelstream.settings import Settings, load


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


def run_service(make: Callable[[], Service]) -> None:
    """Build the service inside the event loop (aiokafka clients need one), run it until
    SIGINT/SIGTERM, then stop it cleanly."""

    async def main() -> None:
        service = make()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.request_stop)
        await service.start()
        try:
            await service.run()
        finally:
            await service.stop()

    asyncio.run(main())


def service_main(settings_cls: type[Settings], app_cls: Callable[[Any], Service]) -> None:
    """Entry point of `modelstream run <service>`: settings, logging, run until signalled."""
    settings = load(settings_cls)
    configure_logging(settings.log_level)
    run_service(lambda: app_cls(settings))
