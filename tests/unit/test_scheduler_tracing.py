"""The scheduler's traces without services: each emission is a span, and the ticks it writes carry it.

The ticks go through the real ``add_to_outbox`` into a session that only records rows: the row's
stored headers are what the outbox relay sends as the record's headers (tests/integration cover
the relay, Kafka and the job handler's span in the same trace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.events import SchedulerTick
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import add_to_outbox
from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import CatchUp, JobDefinition
from schedulers.planning import PlannedTick, ScheduledJob
from schedulers.state import tick_event_id
from schedulers.ticker import TICK_SPAN, Ticker

START = datetime(2026, 5, 4, 10, 0, 0, 250_000, tzinfo=UTC)
SECONDLY = ScheduledJob(
    JobDefinition(
        "scheduled_secondly_probe", "* * * * * *", "test", misfire_grace_s=10, catch_up=CatchUp.RUN_ALL
    ),
    CronSchedule("* * * * * *", ZoneInfo("UTC")),
)


class _Session:
    def __init__(self) -> None:
        self.added: list[object] = []

    def add(self, instance: object) -> None:
        self.added.append(instance)


@dataclass
class Clock:
    at: datetime

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()

    async def sleep_until(self, when: datetime) -> None:
        self.at = max(self.at, when)


@dataclass
class OutboxStore:
    """PgTickStore's writes without PostgreSQL: the cursor in memory, the ticks through add_to_outbox."""

    state: dict[str, datetime] = field(default_factory=dict)
    session: _Session = field(default_factory=_Session)
    refuse: bool = False  # another replica moved the cursor

    async def load(self, initial: Mapping[str, datetime]) -> dict[str, datetime]:
        for job, slot in initial.items():
            self.state.setdefault(job, slot)
        return {job: self.state[job] for job in initial}

    async def advance(
        self, job: str, expected: datetime, last_slot: datetime, ticks: Sequence[PlannedTick]
    ) -> bool:
        if self.refuse or self.state[job] != expected:
            return False
        self.state[job] = last_slot
        for tick in ticks:
            await add_to_outbox(
                cast(AsyncSession, self.session),
                SchedulerTick(job=job, slot=tick.slot, kind=tick.kind),
                producer="dianabot-scheduler",
                event_id=tick_event_id(job, tick.slot),
            )
        return True

    @property
    def rows(self) -> list[OutboxEvent]:
        return [row for row in self.session.added if isinstance(row, OutboxEvent)]


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def traceparent(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_tick_is_written_inside_its_span_so_its_record_continues_the_trace() -> None:
    provider, exporter = traced()
    clock, store = Clock(START), OutboxStore()
    ticker = Ticker([SECONDLY], store, clock, tracer=provider.get_tracer("test"))
    await ticker.load()
    clock.at += timedelta(seconds=1)

    assert await ticker.emit_due() == 1

    [row] = store.rows
    [span] = exporter.get_finished_spans()
    assert span.name == TICK_SPAN
    assert row.headers == {"traceparent": traceparent(span)}
    attributes = dict(span.attributes or {})
    assert attributes["dianabot.job"] == SECONDLY.name
    assert attributes["dianabot.event_type"] == "scheduler.tick"
    assert attributes["dianabot.event_id"] == str(row.event_id)
    slot = START.replace(microsecond=0) + timedelta(seconds=1)
    assert attributes["dianabot.tick.slots"] == (slot.isoformat(),)
    assert attributes["dianabot.tick.emitted"] is True


async def test_catch_up_ticks_of_one_emission_share_its_span() -> None:
    provider, exporter = traced()
    clock, store = Clock(START), OutboxStore()
    ticker = Ticker([SECONDLY], store, clock, tracer=provider.get_tracer("test"))
    await ticker.load()
    clock.at += timedelta(seconds=30)  # past the 10 s grace: all but the last are catch-up ticks

    assert await ticker.emit_due() == 30

    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert {row.headers["traceparent"] for row in store.rows} == {traceparent(span)}
    assert attributes["dianabot.event_ids"] == tuple(str(row.event_id) for row in store.rows)
    assert set(attributes["dianabot.tick.kinds"]) == {"catch_up", "on_time"}  # type: ignore[arg-type]


async def test_a_refused_emission_is_a_span_that_says_so_and_writes_nothing() -> None:
    provider, exporter = traced()
    clock, store = Clock(START), OutboxStore()
    ticker = Ticker([SECONDLY], store, clock, tracer=provider.get_tracer("test"))
    await ticker.load()
    clock.at += timedelta(seconds=1)
    store.refuse = True

    assert await ticker.emit_due() == 0

    assert store.rows == []
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {})["dianabot.tick.emitted"] is False
