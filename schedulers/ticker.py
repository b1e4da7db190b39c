"""The leader's loop: wake at the next due slot, emit what is due, repeat.

Each job's next slot is computed from its previous slot (``plan_due``), and the loop sleeps until
an absolute instant on the injected clock, so a late wake-up makes one tick late without shifting
any later one. Lateness of every on-time tick is exported as a histogram.

Tracing: each emission (one job's due ticks, one transaction) is a span, ``dianabot.scheduler.tick``.
The outbox stores the current trace context with every tick it writes (``add_to_outbox``), the
relay publishes the record as a child of it (``traceparent`` header), and the job's handler span
continues from that header: one trace from the tick to the job's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from opentelemetry import trace
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from dianabot_contracts.events import SchedulerTick
from dianabot_core.clock import Clock
from schedulers import metrics
from schedulers.planning import Plan, ScheduledJob, initial_cursor, plan_due
from schedulers.state import TickStore, tick_event_id

logger = logging.getLogger("dianabot.scheduler")

MAX_ERROR_BACKOFF_S = 10.0
TICK_SPAN = "dianabot.scheduler.tick"


class Ticker:
    """Emits the due ticks of ``jobs`` through ``store``; ``lead`` runs it while ``check`` passes."""

    def __init__(
        self,
        jobs: Sequence[ScheduledJob],
        store: TickStore,
        clock: Clock,
        *,
        max_catch_up_runs: int = 1000,
        on_emitted: Callable[[], None] = lambda: None,
        tracer: Tracer | None = None,
    ) -> None:
        self._jobs = {job.name: job for job in jobs}
        # OpenTelemetry's global tracer unless given one: no-op until a tracer provider is installed.
        self._tracer = tracer or trace.get_tracer("dianabot.scheduler")
        self._store = store
        self._clock = clock
        self._max_runs = max_catch_up_runs
        self._on_emitted = on_emitted
        self._last: dict[str, datetime] = {}
        self._next: dict[str, datetime] = {}

    async def load(self) -> None:
        """Read every job's last slot (creating state for new jobs) and compute the next slots."""
        now = self._clock.now()
        initial = {name: initial_cursor(job, now) for name, job in self._jobs.items()}
        self._last = await self._store.load(initial)
        self._next = {name: job.schedule.next_after(self._last[name]) for name, job in self._jobs.items()}

    def next_due(self) -> datetime | None:
        return min(self._next.values(), default=None)

    async def emit_due(self) -> int:
        """Emit every job's due ticks (one transaction per job); return how many ticks were emitted."""
        now = self._clock.now()
        emitted = 0
        for name, due in list(self._next.items()):
            if due <= now:
                emitted += await self._emit(self._jobs[name], now)
        if emitted:
            self._on_emitted()
        return emitted

    async def _emit(self, job: ScheduledJob, now: datetime) -> int:
        plan = plan_due(job, self._last[job.name], now, self._max_runs)
        if plan.changed and not await self._advance(job, plan):
            logger.warning("job %s was advanced by another replica; reloading its state", job.name)
            await self.load()
            return 0
        self._last[job.name] = plan.last_slot
        self._next[job.name] = plan.next_slot
        self._record(job, plan)
        return len(plan.ticks)

    async def _advance(self, job: ScheduledJob, plan: Plan) -> bool:
        """Move the job's cursor and write its ticks; with ticks, inside the emission's span."""
        if not plan.ticks:
            return await self._store.advance(job.name, self._last[job.name], plan.last_slot, plan.ticks)
        attributes: dict[str, AttributeValue] = {
            "dianabot.job": job.name,
            "dianabot.event_type": SchedulerTick.event_type,
            "dianabot.tick.slots": [tick.slot.isoformat() for tick in plan.ticks],
            "dianabot.tick.kinds": [tick.kind for tick in plan.ticks],
        }
        event_ids = [str(tick_event_id(job.name, tick.slot)) for tick in plan.ticks]
        if len(event_ids) == 1:
            attributes["dianabot.event_id"] = event_ids[0]
        else:
            attributes["dianabot.event_ids"] = event_ids
        with self._tracer.start_as_current_span(TICK_SPAN, attributes=attributes) as span:
            advanced = await self._store.advance(job.name, self._last[job.name], plan.last_slot, plan.ticks)
            span.set_attribute("dianabot.tick.emitted", advanced)
            return advanced

    def _record(self, job: ScheduledJob, plan: Plan) -> None:
        emitted_at = self._clock.now()
        for tick in plan.ticks:
            metrics.TICKS.labels(job.name, tick.kind).inc()
            if tick.kind == "on_time":
                metrics.TICK_LATENESS.labels(job.name).observe((emitted_at - tick.slot).total_seconds())
        if plan.skipped or plan.window_cut:
            metrics.SLOTS_SKIPPED.labels(job.name).inc(plan.skipped)
            logger.warning(
                "job %s: %d missed slots skipped (%s)%s",
                job.name,
                plan.skipped,
                job.definition.catch_up.value,
                "; slots before the catch-up window dropped" if plan.window_cut else "",
            )
        catch_up = [t.slot.isoformat() for t in plan.ticks if t.kind == "catch_up"]
        if catch_up:
            logger.info("job %s: %d catch-up ticks", job.name, len(catch_up), extra={"slots": catch_up[-5:]})

    async def lead(
        self, stop: asyncio.Event, check: Callable[[], Awaitable[None]], check_interval_s: float = 1.0
    ) -> None:
        """Emit until ``stop`` is set or ``check`` raises (leadership lost). Database errors back off."""
        await self.load()
        backoff = 0.0
        checked = self._clock.monotonic()
        while not stop.is_set():
            try:
                await self.emit_due()
                backoff = 0.0
            except Exception:
                backoff = min(MAX_ERROR_BACKOFF_S, max(0.5, backoff * 2))
                logger.exception("emitting ticks failed; retrying in %.1fs", backoff)
            if self._clock.monotonic() - checked >= check_interval_s:
                await check()
                checked = self._clock.monotonic()
            now = self._clock.now()
            wake = now + timedelta(seconds=backoff or check_interval_s)
            if not backoff and (due := self.next_due()) is not None:
                wake = min(wake, due)
            await sleep_until(self._clock, wake, stop)


async def sleep_until(clock: Clock, when: datetime, stop: asyncio.Event) -> None:
    """Sleep on ``clock`` until ``when``, waking early when ``stop`` is set."""
    sleeper = asyncio.ensure_future(clock.sleep_until(when))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
