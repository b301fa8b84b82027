"""Runs one service until SIGINT/SIGTERM: start, run, then a clean stop; exit code 0."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol


class Service(Protocol):
    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

    def request_stop(self) -> None: ...


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
