"""Reachability probes of PostgreSQL and Kafka, and the in-process watchdog that runs them.

The heartbeat runs the probes too, but it runs on PostgreSQL and Kafka, so it cannot report either
being down: ``Watchdog`` probes both from inside each consumer process and tells the admin chat
directly (see ``consumers/monitoring.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dianabot_core.findings import KEY_PREFIX, Finding
from dianabot_core.kafka import admin_client, start_admin_within
from dianabot_core.pipeline.errors import describe
from dianabot_core.settings import KafkaSettings

logger = logging.getLogger("dianabot.monitoring")

# --- probes --------------------------------------------------------------------------------

DATABASE_KEY = f"{KEY_PREFIX}database"
KAFKA_KEY = f"{KEY_PREFIX}kafka"

Probe = Callable[[], Awaitable[Finding | None]]


def database_probe(engine: AsyncEngine, timeout_s: float) -> Probe:
    """A finding when PostgreSQL does not answer ``SELECT 1`` within ``timeout_s``."""

    async def probe() -> Finding | None:
        try:
            async with asyncio.timeout(timeout_s), engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as error:
            return _unreachable(DATABASE_KEY, "PostgreSQL", error, timeout_s)
        return None

    return probe


def kafka_probe(kafka: KafkaSettings, timeout_s: float) -> Probe:
    """A finding when Kafka does not answer a metadata request within ``timeout_s``."""

    async def probe() -> Finding | None:
        admin = admin_client(kafka, "monitoring-probe")
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            await start_admin_within(admin, timeout_s)  # never cancelled mid-connect: see there
        except Exception as error:
            return _unreachable(KAFKA_KEY, f"Kafka at {kafka.bootstrap_servers}", error, timeout_s)
        try:
            async with asyncio.timeout_at(deadline):
                # Brokers only: every topic's metadata (list_topics) cost an idle process more CPU
                # than anything but its consumers' fetches and heartbeats.
                await admin.describe_topics([])
        except Exception as error:
            return _unreachable(KAFKA_KEY, f"Kafka at {kafka.bootstrap_servers}", error, timeout_s)
        finally:
            await admin.close()
        return None

    return probe


def _unreachable(key: str, what: str, error: Exception, timeout_s: float) -> Finding:
    reason = (
        f"no answer within {timeout_s:g}s"
        if isinstance(error, TimeoutError)
        else f"{type(error).__name__}: {describe(error, 200)}"
    )
    return Finding(key, "critical", f"{what} is unreachable: {reason}.", {"error": reason})


# --- the watchdog --------------------------------------------------------------------------------

Notify = Callable[[str], Awaitable[None]]


class Watchdog:
    """Probes PostgreSQL and Kafka every ``interval_s``; after ``failures`` failures in a row tells
    the chat once (``notify``), and once more when the probe passes again. State is in memory: it
    must work while the database is down, so it is per process and forgets on restart. A message
    that could not be sent is tried again at the next probe."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        notify: Notify,
        *,
        interval_s: float,
        failures: int,
        origin: str = "",
    ) -> None:
        self.probes = dict(probes)
        self.notify = notify
        self.origin = origin
        self.interval_s = interval_s
        self.failures = failures
        self.failed_in_row: dict[str, int] = defaultdict(int)
        self.alerted: dict[str, Finding] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.probe_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                continue

    async def probe_once(self) -> None:
        names = list(self.probes)
        found = await asyncio.gather(*(self.probes[name]() for name in names))
        for name, finding in zip(names, found, strict=True):
            await self._update(name, finding)

    async def _update(self, name: str, finding: Finding | None) -> None:
        if finding is None:
            self.failed_in_row[name] = 0
            was = self.alerted.get(name)
            if was is not None and await self._tell(f"✅ Recovered: {name} is reachable again ({was.key})."):
                del self.alerted[name]
            return
        self.failed_in_row[name] += 1
        if self.failed_in_row[name] >= self.failures and name not in self.alerted:
            message = (
                f"🔴 CRITICAL: {finding.summary}\n{self.failed_in_row[name]} probes in a row failed "
                "(jobs and alerts are stalled meanwhile)."
            )
            if await self._tell(message):
                self.alerted[name] = finding

    async def _tell(self, message: str) -> bool:
        text = f"{message}\nSeen by consumer {self.origin}." if self.origin else message
        try:
            await self.notify(text)
        except Exception as error:  # best effort: the next probe tries again
            logger.warning("watchdog could not reach the admin chat: %s", describe(error, 200))
            return False
        return True
