"""Liveness, readiness and Prometheus metrics over HTTP, for the consumers and the scheduler.

    GET /livez    200 while the process's event loop answers (a blocked loop cannot answer at all)
    GET /readyz   200 when every readiness check passes; otherwise 503 with a JSON body naming
                  each check that failed and why
    GET /metrics  the process's Prometheus metrics (text exposition of the default registry)

Readiness checks are async callables that raise when their dependency is not usable (see
``database_check`` and ``broker_check``); they run concurrently, each with a time limit. Port 0
turns the server off, so ``DIANABOT_TELEMETRY__HTTP_PORT=0`` disables it without code changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dianabot_core.pipeline.errors import describe

logger = logging.getLogger("dianabot.health")

Check = Callable[[], Awaitable[None]]


class HealthServerError(RuntimeError):
    """The server could not listen; the message names the address."""


class HealthServer:
    """A small aiohttp server; ``start()`` after the service is up, ``stop()`` on shutdown."""

    def __init__(
        self,
        port: int,
        checks: Mapping[str, Check],
        *,
        host: str = "0.0.0.0",  # probes and Prometheus reach it from outside the container
        check_timeout_s: float = 5.0,
        registry: CollectorRegistry = REGISTRY,
        before_scrape: Check | None = None,
        scrape_refresh_s: float = 15.0,
    ) -> None:
        self.port = port
        self.host = host
        self._checks = dict(checks)
        self._check_timeout_s = check_timeout_s
        self._registry = registry
        self._before_scrape = before_scrape
        self._scrape_refresh_s = scrape_refresh_s
        self._refreshed_at: float | None = None
        self._runner: web.AppRunner | None = None

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def url(self) -> str | None:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}" if self._runner is not None else None

    async def start(self) -> None:
        if not self.enabled or self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)  # probes every few seconds would flood the logs
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as error:
            await runner.cleanup()
            raise HealthServerError(
                f"health server cannot listen on {self.host}:{self.port}: {error.strerror or error}"
            ) from None
        self._runner = runner
        logger.info("health server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def readiness(self) -> dict[str, str | None]:
        """Each check's error (None when it passed), all checks run at once."""
        names = list(self._checks)
        errors = await asyncio.gather(*(self._run_check(self._checks[name]) for name in names))
        return dict(zip(names, errors, strict=True))

    async def _run_check(self, check: Check) -> str | None:
        try:
            await asyncio.wait_for(check(), timeout=self._check_timeout_s)
        except TimeoutError:
            return f"TimeoutError: no answer within {self._check_timeout_s:g}s"
        except Exception as error:
            return f"{type(error).__name__}: {describe(error, 300)}"
        return None

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        results = await self.readiness()
        failed = {name: error for name, error in results.items() if error is not None}
        body = {
            "status": "unready" if failed else "ready",
            "failed": failed,
            "passed": sorted(name for name, error in results.items() if error is None),
        }
        return web.json_response(body, status=503 if failed else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._refresh()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _refresh(self) -> None:
        """Run `before_scrape` (e.g. the lag query) at most once per `scrape_refresh_s`."""
        now = time.monotonic()
        if self._before_scrape is None or (
            self._refreshed_at is not None and now - self._refreshed_at < self._scrape_refresh_s
        ):
            return
        self._refreshed_at = now
        try:
            await asyncio.wait_for(self._before_scrape(), timeout=self._check_timeout_s)
        except Exception as error:  # stale gauges beat a failed scrape
            logger.warning("metrics refresh failed: %s: %s", type(error).__name__, describe(error, 200))


def database_check(engine: AsyncEngine) -> Check:
    """Ready when PostgreSQL answers ``SELECT 1``."""

    async def check() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return check


def broker_check(broker: KafkaBroker, timeout_s: float = 3.0) -> Check:
    """Ready when the broker (and so its subscribers) has started and Kafka answers."""

    async def check() -> None:
        if not broker.running:
            raise RuntimeError("the Kafka broker is not started")
        if not await broker.ping(timeout=timeout_s):
            raise ConnectionError(f"Kafka did not answer within {timeout_s:g}s")

    return check
