"""Processing a batch of records for one handler: the heart of the pipeline.

For a batch (records grouped by partition, each partition in offset order):
1. decode (never raises: see ``records``); malformed records are dead-lettered once with the reason;
2. events of other types on the topic are ignored;
3. fast path: one transaction claims the ledger rows of the whole batch, runs the handler for
   each new event and commits once, as a hand-written batch loop would. Duplicates are skipped;
4. if anything in the fast path fails, the transaction is rolled back and the events are handled
   one by one, each in its own transaction, so one bad event fails alone;
5. a failed event goes to its next retry topic (transient) or to the dead letters (permanent, or
   out of attempts).
When the database itself is unreachable, InfrastructureError propagates: the consumer rewinds
the batch and backs off instead of flooding the retry topics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.topics import TopicSpec
from dianabot_core import metrics
from dianabot_core.clock import Clock
from dianabot_core.logs import bind_log_context
from dianabot_core.outbox import add_to_outbox
from dianabot_core.pipeline import ledger, routing
from dianabot_core.pipeline.dead_letters import DeadLetters
from dianabot_core.pipeline.errors import FailureKind, InfrastructureError, classify, describe, retry_after_s
from dianabot_core.pipeline.handlers import PRODUCER, BatchContext, Delivery, HandlerContext, HandlerSpec
from dianabot_core.pipeline.records import DecodedEvent, Malformed, Origin, Record, decode, headers_text
from dianabot_core.uow import UnitOfWork

logger = logging.getLogger("dianabot.pipeline")
tracer = trace.get_tracer("dianabot.pipeline")

# A per-event handler's batch commits at least this often (see `_handle_together`): slow events such
# as Telegram sends (0.1 s and more each under load) would otherwise hold a batch's effects and
# offsets for minutes, and a crash would repeat all of it.
PROGRESS_EVERY_S = 2.0

Progress = Callable[[Sequence[Record]], Awaitable[None]]


def _trace_parent(record: Record) -> Context:
    """The producer's trace context, carried in the record's headers by the telemetry middleware."""
    try:
        return propagate.extract(headers_text(record))
    except Exception:  # a forged traceparent costs the link, never the event
        return Context()


@dataclass(frozen=True)
class PipelineDeps:
    """What every handler runner shares in one process.

    ``services`` is handed to every handler as ``ctx.services`` and never looked into here: its
    type is the composition root's (``consumers.services.Services``), and the handlers' annotations
    (``HandlerContext[Services]``) say what they expect of it.
    """

    session_factory: async_sessionmaker[AsyncSession]
    router: routing.FailureRouter
    clock: Clock
    producer: str = PRODUCER
    services: object = None


@dataclass(frozen=True)
class Deferred:
    """A retry partition stopped at its first record that is not due soon: the consumer rewinds the
    partition to it and pauses it until ``due_at`` instead of holding the poll loop that long."""

    topic: str
    partition: int
    offset: int
    due_at: datetime


@dataclass
class BatchReport:
    handled: int = 0
    duplicates: int = 0
    ignored: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deferred: list[Deferred] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class HandlerRunner:
    """Runs one handler over batches from one consumer group; `stage` 0 is the source topic.

    On a retry stage, a record due within ``wait_up_to_s`` is waited for in the batch; one due later
    stops its partition there (``BatchReport.deferred``) when the consumer can pause partitions,
    so a consumer shared by several retry topics never sleeps through another topic's due records.
    """

    def __init__(
        self,
        spec: HandlerSpec[Any],
        group: str,
        deps: PipelineDeps,
        *,
        stage: int = 0,
        wait_up_to_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.group = group
        self.deps = deps
        self.stage = stage
        self.wait_up_to_s = wait_up_to_s
        self._dead_letters = DeadLetters(deps.session_factory, deps.router)

    async def process(self, records: Sequence[Record], progress: Progress | None = None) -> BatchReport:
        """Handle a batch; `progress` is told of each prefix of `records` that is done (handled or
        dead-lettered) while a slow batch goes on, so its consumer can commit that far."""
        started = time.perf_counter()
        report = BatchReport()
        events = await self._decode(records, report)
        if self.stage > 0:
            # Retry stage: records wait for their due time, each partition on its own so one
            # partition's wait never holds up another's due records.
            # A task group: when one partition fails (an outage), the others are cancelled before
            # the batch is rewound, so none of them races the re-read.
            by_partition: dict[tuple[str, int], list[DecodedEvent]] = defaultdict(list)
            for event in events:
                by_partition[(event.record.topic, event.record.partition)].append(event)
            try:
                async with asyncio.TaskGroup() as tasks:
                    waits = [tasks.create_task(self._handle_when_due(es)) for es in by_partition.values()]
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            for wait in waits:
                report.add(wait.result())
        else:
            await self._handle_in_chunks(events, records, report, progress)
        self._count(report)
        metrics.BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
        return report

    async def _decode(self, records: Sequence[Record], report: BatchReport) -> list[DecodedEvent]:
        events: list[DecodedEvent] = []
        for record in records:
            item = decode(record, stage=self.stage)
            if isinstance(item, Malformed):
                if await self._dead_letter(record, item.origin, reason=item.reason, attempts=self.stage):
                    report.dead_lettered += 1
            elif item.envelope.event_type in self.spec.event_types:
                events.append(item)
            else:
                report.ignored += 1
        return events

    async def _handle_when_due(self, events: list[DecodedEvent]) -> BatchReport:
        report = BatchReport()
        for event in events:
            if event.due_at is not None:
                due = min(event.due_at, self._latest_due())
                wait_s = (due - self.deps.clock.now()).total_seconds()
                if self.wait_up_to_s is not None and wait_s > self.wait_up_to_s:
                    record = event.record
                    # The rest of the partition waits behind it: retries keep their order.
                    report.deferred.append(Deferred(record.topic, record.partition, record.offset, due))
                    return report
                await self.deps.clock.sleep_until(due)
            report.add(await self._handle_alone(event))
        return report

    def _latest_due(self) -> datetime:
        """No retry of this stage is due later than this, so a forged or skewed due time cannot
        hold the lane longer than the stage's own delay (see ``routing.retry_plan``)."""
        return routing.due_after(
            self.deps.clock.now(),
            routing.longest_wait_s(self.spec.retry_delays_s, self.stage, self.spec.retry_jitter),
        )

    async def _handle_in_chunks(
        self,
        events: list[DecodedEvent],
        records: Sequence[Record],
        report: BatchReport,
        progress: Progress | None,
    ) -> None:
        """The fast path over as many events as fit in PROGRESS_EVERY_S, then the next chunk; a chunk
        that failed is handled again one event at a time. Records arrive grouped by partition in
        offset order, so handling the events in order keeps per-key order."""
        position: dict[int, int] = {}
        reported = time.perf_counter()

        async def done_through(event: DecodedEvent) -> None:
            nonlocal position, reported
            if progress is not None:
                position = position or {id(record): index for index, record in enumerate(records)}
                await progress(records[: position[id(event.record)] + 1])
            reported = time.perf_counter()

        start = 0
        while start < len(events):
            rest = events[start:]
            done, together = await self._handle_together(rest, report) if len(rest) > 1 else (1, False)
            if not together:
                # One by one, each event commits on its own: tell the consumer every
                # PROGRESS_EVERY_S, or a batch of slow sends holds its offsets for minutes.
                for index, event in enumerate(rest[:done], start=start + 1):
                    report.add(await self._handle_alone(event))
                    if index < len(events) and time.perf_counter() - reported > PROGRESS_EVERY_S:
                        await done_through(event)
            start += done
            if start < len(events):
                await done_through(events[start - 1])

    async def _handle_together(self, events: list[DecodedEvent], report: BatchReport) -> tuple[int, bool]:
        """One transaction over a prefix of `events`: (its length, True) once committed, or (the
        events it reached, False) with nothing committed if one of them failed.

        A per-event handler's prefix ends once it has run PROGRESS_EVERY_S: a batch of slow events
        (Telegram sends) commits as it goes instead of holding every effect, and the consumer's
        offsets, until its last event. A batch handler takes the whole batch.
        """
        deadline = time.perf_counter() + PROGRESS_EVERY_S
        reached = len(events)
        called = 0
        try:
            async with UnitOfWork(self.deps.session_factory) as uow:
                fresh = await ledger.claim(
                    uow.session,
                    self.spec.name,
                    [(e.envelope.event_id, e.envelope.event_type) for e in events],
                )
                if self.spec.batch:
                    new_events = []
                    for event in events:
                        if event.envelope.event_id in fresh:
                            fresh.discard(event.envelope.event_id)  # a second copy is a duplicate
                            new_events.append(event)
                    if new_events:
                        await self._call_batch(new_events, uow)
                    called = len(new_events)
                else:
                    reached = 0
                    for event in events:
                        reached += 1
                        if event.envelope.event_id not in fresh:
                            continue  # handled before, or a second copy in this batch
                        fresh.discard(event.envelope.event_id)
                        await self._call(event, uow)
                        called += 1
                        if time.perf_counter() > deadline:
                            break
                    await ledger.release(uow.session, self.spec.name, list(fresh))  # not reached
                await uow.commit()
        except Exception as error:
            await self._raise_if_database_down(error)
            logger.info(
                "batch of %d fell back to one-by-one handling after %s",
                reached,
                type(error).__name__,
                extra={"handler": self.spec.name},
            )
            return reached, False
        report.handled += called
        report.duplicates += reached - called
        return reached, True

    async def _handle_alone(self, event: DecodedEvent) -> BatchReport:
        report = BatchReport()
        try:
            async with UnitOfWork(self.deps.session_factory) as uow:
                fresh = await ledger.claim(
                    uow.session, self.spec.name, [(event.envelope.event_id, event.envelope.event_type)]
                )
                if not fresh:
                    report.duplicates += 1
                    return report
                if self.spec.batch:
                    await self._call_batch([event], uow)
                else:
                    await self._call(event, uow)
                await uow.commit()
            report.handled += 1
        except Exception as error:
            await self._raise_if_database_down(error)
            await self._route_failure(event, error, report)
        return report

    async def _call_batch(self, events: list[DecodedEvent], uow: UnitOfWork) -> None:
        links = [Link(trace.get_current_span(_trace_parent(e.record)).get_span_context()) for e in events]
        ctx = BatchContext(
            session=uow.session,
            clock=self.deps.clock,
            emit=self._batch_emitter(uow.session),
            services=self.deps.services,
        )
        deliveries = [Delivery(e.payload, e.envelope, e.attempt) for e in events]
        attributes: dict[str, str | int] = {
            "dianabot.handler": self.spec.name,
            "dianabot.batch_size": len(events),
        }
        started = time.perf_counter()
        with (
            tracer.start_as_current_span(
                self.spec.name, kind=SpanKind.CONSUMER, links=links, attributes=attributes
            ) as span,
            bind_log_context(handler=self.spec.name, batch_size=len(events)),
        ):
            try:
                async with asyncio.timeout(self.spec.timeout_s):
                    await self.spec.func(deliveries, ctx)
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            finally:
                metrics.HANDLER_SECONDS.labels(self.spec.name).observe(time.perf_counter() - started)

    def _batch_emitter(self, session: AsyncSession) -> Any:
        async def emit(
            payload: EventPayload,
            caused_by: EventEnvelope,
            *,
            event_id: UUID | None = None,
            topic: TopicSpec | None = None,
        ) -> EventEnvelope:
            return await add_to_outbox(
                session,
                payload,
                producer=self.deps.producer,
                caused_by=caused_by,
                event_id=event_id,
                topic=topic.name if topic else None,
            )

        return emit

    async def _call(self, event: DecodedEvent, uow: UnitOfWork) -> None:
        envelope, record = event.envelope, event.record
        parent = _trace_parent(record)
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.kafka.destination.partition": record.partition,
            "messaging.kafka.message.offset": record.offset,
            "messaging.consumer.group.name": self.group,
            "dianabot.event_id": str(envelope.event_id),
            "dianabot.event_type": envelope.event_type,
            "dianabot.handler": self.spec.name,
            "dianabot.attempt": event.attempt,
        }
        ctx = HandlerContext(
            session=uow.session,
            envelope=envelope,
            clock=self.deps.clock,
            emit=self._emitter(uow.session, envelope),
            attempt=event.attempt,
            services=self.deps.services,
        )
        started = time.perf_counter()
        with (
            tracer.start_as_current_span(
                self.spec.name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
            ) as span,
            bind_log_context(
                event_id=str(envelope.event_id), event_type=envelope.event_type, handler=self.spec.name
            ),
        ):
            try:
                async with asyncio.timeout(self.spec.timeout_s):
                    await self.spec.func(event.payload, ctx)
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            finally:
                metrics.HANDLER_SECONDS.labels(self.spec.name).observe(time.perf_counter() - started)

    def _emitter(self, session: AsyncSession, cause: EventEnvelope) -> Any:
        """The batch emitter with its cause fixed: a per-event handler's events are caused by its one."""
        return functools.partial(self._batch_emitter(session), caused_by=cause)

    async def _route_failure(self, event: DecodedEvent, error: BaseException, report: BatchReport) -> None:
        kind = classify(error)
        attempt = event.attempt + 1
        metrics.FAILURES.labels(self.spec.name, type(error).__name__).inc()
        plan = None
        if kind is FailureKind.TRANSIENT:
            plan = routing.retry_plan(
                self.spec.retry_delays_s, attempt, self.spec.retry_jitter, retry_after_s(error)
            )
        with bind_log_context(event_id=str(event.envelope.event_id), handler=self.spec.name):
            if plan is not None:
                stage, delay = plan
                logger.warning(
                    "handler failed (%s: %s); retry %d in %.1fs",
                    type(error).__name__,
                    describe(error, 200),
                    stage,
                    delay,
                )
                retry = self.deps.router.to_retry(
                    event.record,
                    origin=event.origin,
                    topic=self.spec.retry_topic(self.group, stage),
                    attempt=stage,
                    due_at=routing.due_after(self.deps.clock.now(), delay),
                    error=error,
                )
                if (unpublishable := await self._publish(retry)) is None:
                    report.retried += 1
                    return
                reason = f"transient: {type(error).__name__} (retry cannot be published: {unpublishable})"
            else:
                reason = f"{kind.value}: {type(error).__name__}" + (
                    " (retries exhausted)" if kind is FailureKind.TRANSIENT else ""
                )
            logger.error("handler failed (%s: %s); dead-lettered", type(error).__name__, describe(error, 200))
            if await self._dead_letter(
                event.record, event.origin, reason=reason, attempts=attempt, error=error
            ):
                report.dead_lettered += 1

    async def _dead_letter(
        self,
        record: Record,
        origin: Origin,
        *,
        reason: str,
        attempts: int,
        error: BaseException | None = None,
    ) -> bool:
        if error is None:
            logger.error(
                "dead-lettered: %s", reason, extra={"handler": self.spec.name, "offset": record.offset}
            )
        return await self._dead_letters.send(
            record,
            origin=origin,
            handler=self.spec.name,
            reason=reason,
            attempts=attempts,
            failed_at=self.deps.clock.now(),
            error=error,
        )

    @staticmethod
    async def _publish(publishing: Awaitable[None]) -> str | None:
        """None once Kafka acknowledged; the reason when Kafka will never take this record."""
        try:
            await publishing
        except routing.NEVER_PUBLISHABLE as error:
            return f"{type(error).__name__}: {describe(error, 200)}"
        except Exception as error:
            # Not committing the source offset is what keeps the event: the batch is re-read.
            raise InfrastructureError(f"could not publish to Kafka: {type(error).__name__}") from error
        return None

    async def _raise_if_database_down(self, error: BaseException) -> None:
        """Tell an outage of the database apart from a failure of this one event."""
        if not isinstance(error, SQLAlchemyError | OSError):
            return
        try:
            async with self.deps.session_factory() as session:
                await asyncio.wait_for(session.execute(text("SELECT 1")), timeout=5)
        except Exception as probe_error:
            raise InfrastructureError(f"database unreachable: {type(probe_error).__name__}") from error

    def _count(self, report: BatchReport) -> None:
        for outcome, count in report.counts().items():
            if count:
                metrics.EVENTS.labels(self.spec.name, outcome).inc(count)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a failed task group: an outage first, else the first failure."""
    errors = list(group.exceptions)
    return next((e for e in errors if isinstance(e, InfrastructureError)), errors[0])
