"""The transactional outbox: events are written with the change that causes them, then relayed to Kafka.

A bot service or a handler calls ``add_to_outbox`` inside its own transaction: the event exists
exactly when the change it describes was committed (a rolled-back transaction leaves no event).
``OutboxRelay`` publishes the committed rows in id order and marks them published.

Guarantee: **at least once**. A row is marked only after Kafka acknowledged it (idempotent
producer, ``acks=all``), so a crash or error between publishing and marking publishes the same
``event_id`` again on the next pass; consumers' ledgers (``processed_events``) drop the repeat.
Nothing committed is ever lost, and nothing rolled back is ever published.

Order: one relay publishes at a time (a PostgreSQL advisory lock elects it), rows are sent in id
order, and the producer keeps per-partition order, so one key's events arrive in the order they
were written. Two caveats: ids are taken at insert, not at commit, so events of the same key
written by *concurrent* transactions may be relayed in either order; and a record that fails
while later ones succeed is re-sent after them (the later ones are re-sent too, so the last copy
of each key is in order again).

A relay that hangs (SIGSTOP, a stuck await) never stops the outbox: its lock is a lease that the
server ends after ``lock_session_timeout_s`` without pings, a standby takes over, and the hung
relay, once it runs again, checks its lease before each send and stands down. Its pass's row
locks end sooner (half that time idle), so the next leader starts from the oldest row.

A row Kafka can never take is **parked** (``parked_at``, ``parked_reason``), not retried forever:
the rows behind it go on, and monitoring raises an alert while parked rows exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from opentelemetry import context, propagate
from sqlalchemy import Row, Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE, EventEnvelope, EventPayload
from dianabot_contracts.topics import topic_for
from dianabot_core import metrics
from dianabot_core.advisory_lease import AdvisoryLease, LeaseLost
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox_wakeups import OutboxWakeups
from dianabot_core.publisher import CONTENT_TYPE, EventPublisher
from dianabot_core.record_limits import (
    DEFAULT_MAX_RECORD_BYTES,
    SMALL_RECORD_BYTES,
    TopicLimits,
    record_size,
    too_large,
)

logger = logging.getLogger("dianabot.outbox")

# The advisory lock that elects the one publishing relay (b"outbox" read as an integer).
OUTBOX_RELAY_LOCK_KEY = 122_550_254_464_888
# The header FastStream adds to every record it publishes.
CORRELATION_HEADER = "correlation_id"
# Kafka refuses these records however often they are sent.
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


async def add_to_outbox(
    session: AsyncSession,
    payload: EventPayload,
    *,
    producer: str,
    caused_by: EventEnvelope | None = None,
    event_id: UUID | None = None,
    topic: str | None = None,
) -> EventEnvelope:
    """Add an event to the caller's transaction; it is relayed once (and only if) that commits.

    Async so callers ``await`` it like any other database step; it only adds the row to the
    session and does not flush or commit. ``topic`` overrides the registry's ``topic_for(payload)``
    (custom routing, tests). The current OpenTelemetry context is stored with the row, so the
    trace continues from the relay's publish. A repeated ``event_id`` fails the transaction on flush.
    """
    envelope = EventEnvelope.wrap(payload, producer=producer, caused_by=caused_by, event_id=event_id)
    trace_headers: dict[str, str] = {}
    propagate.inject(trace_headers)
    session.add(
        OutboxEvent(
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            topic=topic or topic_for(payload).name,
            key=envelope.key,
            body=envelope.model_dump(mode="json"),
            headers=trace_headers,
        )
    )
    return envelope


@dataclass
class _PassResult:
    """What one pass did: rows acknowledged, rows parked (with why), and the failure that ended it."""

    acked: list[int] = field(default_factory=list)
    parked: list[tuple[Row[Any], str]] = field(default_factory=list)
    error: BaseException | None = None


class OutboxRelay:
    """Publishes unpublished outbox rows in id order; ``run`` keeps one relay publishing across processes.

    Delivery is at least once (see the module docstring): rows are marked only after Kafka's ack.
    A row Kafka can never take (larger than ``max_record_bytes`` or its topic's
    ``max.message.bytes``, or refused by Kafka as too large) is parked instead: marked with
    ``parked_at`` and the reason, logged, counted, and never tried again; the rows after it go on.

    ``topics`` restricts a relay to some topics (e.g. a separate relay for critical topics, with
    its own ``lock_key``); by default it relays every row.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 0.2,
        idle_poll_s: float = 5.0,
        standby_retry_s: float = 1.0,
        ack_timeout_s: float = 60.0,
        max_backoff_s: float = 30.0,
        topics: Collection[str] | None = None,
        lock_key: int = OUTBOX_RELAY_LOCK_KEY,
        lock_session_timeout_s: float = 10.0,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._session_factory = session_factory
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._idle_poll_s = idle_poll_s
        self._standby_retry_s = standby_retry_s
        self._ack_timeout_s = ack_timeout_s
        self._max_backoff_s = max_backoff_s
        self._lock_key = lock_key
        self._lock_session_timeout_s = lock_session_timeout_s
        # A pass's transaction may sit idle for half the lock's timeout: a relay that hangs mid-pass
        # loses its row locks before its advisory lock, so the next leader finds every row free.
        self._pass_idle_ms = int(lock_session_timeout_s * 500)
        self._touch_every_s = lock_session_timeout_s / 10
        self._max_record_bytes = max_record_bytes
        self._topic_limits = TopicLimits(publisher.broker)
        self._fence: Callable[[], None] | None = None  # while leading: the lease's check
        query = select(
            OutboxEvent.id,
            OutboxEvent.event_id,
            OutboxEvent.event_type,
            OutboxEvent.topic,
            OutboxEvent.key,
            OutboxEvent.body,
            OutboxEvent.headers,
        ).where(OutboxEvent.published_at.is_(None), OutboxEvent.parked_at.is_(None))
        if topics is not None:
            query = query.where(OutboxEvent.topic.in_(sorted(topics)))
        self._pending: Select[Any] = (
            query.order_by(OutboxEvent.id).limit(batch_size).with_for_update(skip_locked=True)
        )

    # --- one pass ---------------------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Publish up to ``batch_size`` unpublished rows, mark the acknowledged ones; return their count.

        Rows are locked (``FOR UPDATE SKIP LOCKED``) for the pass. When a record fails, the rows
        acknowledged before it are still marked (and parked ones parked), then the error is raised.
        """
        async with self._session_factory() as session, session.begin():
            rows = (await session.execute(self._pending)).all()
            if not rows:
                return 0
            await session.execute(
                select(func.set_config("idle_in_transaction_session_timeout", str(self._pass_idle_ms), True))
            )
            async with _kept_alive(session, self._touch_every_s):
                result = await self._publish(rows)
            await _mark(session, result)
        metrics.OUTBOX_PUBLISHED.inc(len(result.acked))
        _report_parked(result.parked)
        if result.error is not None:
            raise result.error
        return len(result.acked)

    async def _publish(self, rows: Sequence[Row[Any]]) -> _PassResult:
        """Send every row in order, then wait for all acks; stop at the first failure that is not a size."""
        result = _PassResult()
        sent: list[tuple[Row[Any], asyncio.Future[Any]]] = []
        for row in rows:
            try:
                pending = await self._enqueue(row)
            except _TOO_LARGE as refused:  # the producer's own size check
                result.parked.append((row, f"the producer refused it: {_describe(refused)}"))
                continue
            except Exception as failure:  # the rows sent before it still count
                result.error = failure
                break
            if isinstance(pending, str):
                result.parked.append((row, pending))
            else:
                sent.append((row, pending))
        if sent:
            await asyncio.wait([future for _, future in sent], timeout=self._ack_timeout_s)
        for row, future in sent:
            future.add_done_callback(_consume_result)
            if not future.done():
                result.error = TimeoutError(f"Kafka did not acknowledge outbox row {row.id} in time")
                break
            if (send_error := future.exception()) is None:
                result.acked.append(row.id)
            elif isinstance(send_error, _TOO_LARGE):
                result.parked.append((row, f"Kafka refused it: {_describe(send_error)}"))
            else:
                result.error = send_error
                break
        return result

    async def _enqueue(self, row: Row[Any]) -> asyncio.Future[Any] | str:
        """Send the row's record; the ack to await, or why it can never be sent (it is then not sent)."""
        stored: dict[str, Any] = row.headers or {}
        headers = {str(name): str(value) for name, value in stored.items()}
        headers[HEADER_EVENT_ID] = str(row.event_id)
        headers[HEADER_EVENT_TYPE] = row.event_type
        body: dict[str, Any] = row.body
        value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        correlation_id = str(body.get("correlation_id") or row.event_id)
        oversize = await self._oversize(
            row.topic, row.key, value, {**headers, CORRELATION_HEADER: correlation_id}
        )
        if oversize is not None:
            return oversize
        if self._fence is not None:
            self._fence()  # never send once the lease may have passed to another relay
        # With FastStream's telemetry middleware on the broker, its publish span joins the
        # writer's trace; without it, the stored traceparent travels as it is.
        token = context.attach(propagate.extract(headers)) if stored else None
        try:
            return await self._publisher.enqueue(
                row.topic, key=row.key, body=value, headers=headers, correlation_id=correlation_id
            )
        finally:
            if token is not None:
                context.detach(token)

    async def _oversize(self, topic: str, key: str, value: bytes, headers: Mapping[str, str]) -> str | None:
        size = record_size(key.encode(), value, {CONTENT_TYPE: "application/json", **headers})
        if size > self._max_record_bytes:
            return too_large(size, self._max_record_bytes, "the relay's max_record_bytes")
        topic_limit = await self._topic_limits.limit(topic) if size > SMALL_RECORD_BYTES else None
        if topic_limit is not None and size > topic_limit:
            return too_large(size, topic_limit, f"max.message.bytes of {topic}")
        return None

    # --- the long-running loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; only the holder of the advisory lock publishes.

        A standby retries the lock every ``standby_retry_s``. The leader holds it as a lease
        (``dianabot_core/advisory_lease.py``): if it hangs, the server ends its lock session after
        ``lock_session_timeout_s`` and a standby takes over; once it runs again, it notices the
        lease ran out before it sends anything more. Errors are logged and retried with a
        backoff; the loop only ends when ``stop`` is set (or the task is cancelled).
        """
        lease = AdvisoryLease(
            self._engine().url,
            self._lock_key,
            session_timeout_s=self._lock_session_timeout_s,
            name="dianabot-outbox-lock",
        )
        try:
            await self._run(lease, stop)
        finally:
            await lease.close()

    async def _run(self, lease: AdvisoryLease, stop: asyncio.Event) -> None:
        backoff = _Backoff(self._max_backoff_s)
        standby_logged = False
        while not stop.is_set():
            try:
                taken = await lease.try_acquire()
            except Exception:
                logger.exception(
                    "outbox relay cannot reach the database", extra={"retry_in_s": backoff.delay}
                )
                await _sleep(stop, backoff.next())
                continue
            if not taken:
                if not standby_logged:
                    logger.info("outbox relay on standby: another relay holds lock %s", self._lock_key)
                    standby_logged = True
                await _sleep(stop, self._standby_retry_s)
                continue
            backoff.reset()
            standby_logged = False
            logger.info("outbox relay is publishing (advisory lock %s taken)", self._lock_key)
            try:
                await self._lead(lease, stop)
            except Exception:
                logger.exception("outbox relay lost its lock connection", extra={"retry_in_s": backoff.delay})
                await _sleep(stop, backoff.next())
            finally:
                await lease.release()
                logger.info("outbox relay released the advisory lock")

    async def _lead(self, lease: AdvisoryLease, stop: asyncio.Event) -> None:
        keeper = asyncio.create_task(lease.keep(), name="outbox-relay-lease")
        self._fence = lease.check
        backoff = _Backoff(self._max_backoff_s)
        # Only the leader listens: a standby has nothing to publish.
        wakeups = OutboxWakeups(self._engine().url)
        try:
            while not stop.is_set():
                lease.check()  # LeaseLost leaves the leadership
                wakeups.arm()
                try:
                    published = await self.relay_once()
                except LeaseLost:
                    raise
                except Exception:
                    logger.exception("outbox relay pass failed", extra={"retry_in_s": backoff.delay})
                    await _sleep(stop, backoff.next())
                    continue
                backoff.reset()
                if published == 0:
                    await wakeups.wait(stop, self._poll_interval_s, self._idle_poll_s)
        finally:
            await wakeups.close()
            self._fence = None
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    def _engine(self) -> AsyncEngine:
        bind = self._session_factory.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("OutboxRelay.run needs a session factory bound to an AsyncEngine")
        return bind


@contextlib.asynccontextmanager
async def _kept_alive(session: AsyncSession, every_s: float) -> AsyncIterator[None]:
    """Ping the pass's transaction while it waits on Kafka, so it never counts as idle then.

    A hung process stops pinging, and the server ends the transaction (see ``relay_once``). The
    session is only used here while the block runs; leaving waits for a ping in flight.
    """
    done = asyncio.Event()

    async def ping() -> None:
        while not await _wait(done, every_s):
            await session.execute(text("SELECT 1"))

    pinger = asyncio.create_task(ping(), name="outbox-pass-keepalive")
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(Exception):  # a dead connection fails the pass's marking instead
            await pinger


async def _mark(session: AsyncSession, result: _PassResult) -> None:
    if result.acked:
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(result.acked))
            .values(published_at=func.now())
            .execution_options(synchronize_session=False)
        )
    for row, reason in result.parked:  # rare: one statement each
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == row.id)
            .values(parked_at=func.now(), parked_reason=reason)
            .execution_options(synchronize_session=False)
        )


def _report_parked(parked: Sequence[tuple[Row[Any], str]]) -> None:
    metrics.OUTBOX_PARKED.inc(len(parked))
    for row, reason in parked:
        logger.error(
            "outbox row %s parked: %s",
            row.id,
            reason,
            extra={
                "outbox_id": row.id,
                "event_id": str(row.event_id),
                "event_type": row.event_type,
                "topic": row.topic,
            },
        )


class _Backoff:
    """Exponential delays from 0.5 s up to a ceiling, reset after a success."""

    def __init__(self, ceiling_s: float, first_s: float = 0.5) -> None:
        self._first = first_s
        self._ceiling = ceiling_s
        self.delay = first_s

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self._ceiling)
        return delay

    def reset(self) -> None:
        self.delay = self._first


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when ``stop`` is set."""
    await _wait(stop, seconds)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
    return event.is_set()


def _consume_result(future: asyncio.Future[Any]) -> None:
    # Retrieve a late failure so asyncio does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]
