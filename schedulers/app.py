"""The scheduler's composition root: ``faststream run schedulers.app:app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

from faststream import FastStream

from core.kafka import create_broker
from core.runtime import build_resources, resources_lifespan, settings_or_exit
from core.settings import Settings

logger = logging.getLogger("dianabot.scheduler")


def create_app(settings: Settings) -> FastStream:
    resources = build_resources(settings)
    broker = create_broker(settings.kafka, logger=logging.getLogger("dianabot.broker"))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with resources_lifespan(resources, "scheduler"):
            yield

    app = FastStream(broker, lifespan=lifespan, logger=logger)
    app.context.set_global("resources", resources)

    @app.after_startup
    async def announce_ready() -> None:
        logger.info("scheduler ready", extra={"kafka": settings.kafka.bootstrap_servers})

    return app


@cache
def _default_app() -> FastStream:
    return create_app(settings_or_exit())


def __getattr__(name: str) -> FastStream:
    # Built on first access (by `faststream run schedulers.app:app`), not at import time.
    if name == "app":
        return _default_app()
    raise AttributeError(name)
