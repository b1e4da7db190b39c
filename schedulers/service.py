"""One scheduler replica: stand by until it wins the advisory lock, then emit ticks and relay them.

Where ticks are published: the leader writes them to the outbox (with the cursor, one
transaction), and a tick relay *in the leader* publishes them to Kafka right after each commit.
The consumers' own outbox relay would publish them too, but only after its next poll, and only
while a consumer process runs; relaying here keeps tick lateness at a few milliseconds and ticks
flowing while the consumers are being deployed. Both relays lock rows with ``SKIP LOCKED`` and
mark them, so a row is published by one of them (at least once, as always with the outbox; a
repeat carries the same event id). The leader's relay only takes rows of the tick topic.

Tracing: the ticker's span of each emission is where a tick's trace starts (schedulers/ticker.py).
The tick relay's own SQL is not traced: it polls every ``relay_poll_interval_s`` when idle, and
each poll would be a trace of its own; the publish of a tick still joins the tick's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Tracer

from dianabot_core.clock import Clock
from dianabot_core.outbox import OutboxRelay
from dianabot_core.schedule.settings import SchedulerSettings
from schedulers import metrics
from schedulers.leader import AdvisoryLock, LeadershipLost
from schedulers.planning import ScheduledJob
from schedulers.state import TickStore
from schedulers.ticker import Ticker

logger = logging.getLogger("dianabot.scheduler")


class TickRelay:
    """Publishes the tick topic's outbox rows: at once when poked, else every ``poll_interval_s``."""

    def __init__(self, relay: OutboxRelay, poll_interval_s: float) -> None:
        self._relay = relay
        self._poll_interval_s = poll_interval_s
        self._poked = asyncio.Event()

    def poke(self) -> None:
        self._poked.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.0
        while not stop.is_set():
            self._poked.clear()
            try:
                with suppress_instrumentation():  # the relay's SQL (see the module docstring)
                    published = await self._relay.relay_once()
                backoff = 0.0
            except Exception:
                backoff = min(10.0, max(0.5, backoff * 2))
                logger.exception("publishing ticks failed (they stay in the outbox); retry in %.1fs", backoff)
                await _wait(stop, backoff)
                continue
            if not published:
                await _wait_any(stop, self._poked, self._poll_interval_s)


@dataclass
class SchedulerService:
    """Leader election around a Ticker and a TickRelay; ``run`` until ``stop`` is set."""

    jobs: Sequence[ScheduledJob]
    settings: SchedulerSettings
    store: TickStore
    lock: AdvisoryLock
    relay: OutboxRelay
    clock: Clock
    tracer: Tracer = field(default_factory=lambda: trace.get_tracer("dianabot.scheduler"))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self.run(self._stop), name="scheduler")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=15)
            self._task = None
        await self.lock.close()

    async def run(self, stop: asyncio.Event) -> None:
        standby_logged = False
        while not stop.is_set():
            try:
                leading = await self.lock.try_acquire()
            except Exception as error:
                logger.warning("scheduler cannot reach the database for its lock: %s", type(error).__name__)
                leading = False
            if not leading:
                if not standby_logged:
                    logger.info("scheduler on standby: another replica holds lock %s", self.lock.key)
                    standby_logged = True
                await _wait(stop, self.settings.standby_retry_s)
                continue
            standby_logged = False
            await self._lead(stop)

    async def _lead(self, stop: asyncio.Event) -> None:
        metrics.IS_LEADER.set(1)
        metrics.LEADERSHIPS.inc()
        logger.info(
            "scheduler is leading (advisory lock %s)",
            self.lock.key,
            extra={"jobs": [job.name for job in self.jobs]},
        )
        tick_relay = TickRelay(self.relay, self.settings.relay_poll_interval_s)
        ticker = Ticker(
            self.jobs,
            self.store,
            self.clock,
            max_catch_up_runs=self.settings.max_catch_up_runs,
            on_emitted=tick_relay.poke,
            tracer=self.tracer,
        )
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(tick_relay.run(relay_stop), name="tick-relay")
        try:
            await ticker.lead(stop, self.lock.check, self.settings.lock_check_interval_s)
        except LeadershipLost as lost:
            logger.warning("scheduler lost the lead: %s", lost)
        except Exception:
            logger.exception("scheduler leader loop failed; standing by")
        finally:
            relay_stop.set()
            tick_relay.poke()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(relay_task, timeout=10)
            await self.lock.release()
            metrics.IS_LEADER.set(0)
        if not stop.is_set():
            await _wait(stop, self.settings.standby_retry_s)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(stop: asyncio.Event, poked: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(poked.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
