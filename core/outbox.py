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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any
from uuid import UUID

from opentelemetry import context, propagate
from sqlalchemy import Row, Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from contracts.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE, EventEnvelope, EventPayload
from contracts.topics import topic_for
from core import metrics
from core.models import OutboxEvent
from core.publisher import EventPublisher

logger = logging.getLogger("dianabot.outbox")

# The advisory lock that elects the one publishing relay (b"outbox" read as an integer).
OUTBOX_RELAY_LOCK_KEY = 122_550_254_464_888


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


class OutboxRelay:
    """Publishes unpublished outbox rows in id order; ``run`` keeps one relay publishing across processes.

    Delivery is at least once (see the module docstring): rows are marked only after Kafka's ack.

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
        standby_retry_s: float = 1.0,
        ack_timeout_s: float = 60.0,
        max_backoff_s: float = 30.0,
        topics: Collection[str] | None = None,
        lock_key: int = OUTBOX_RELAY_LOCK_KEY,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._session_factory = session_factory
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._standby_retry_s = standby_retry_s
        self._ack_timeout_s = ack_timeout_s
        self._max_backoff_s = max_backoff_s
        self._lock_key = lock_key
        query = select(
            OutboxEvent.id,
            OutboxEvent.event_id,
            OutboxEvent.event_type,
            OutboxEvent.topic,
            OutboxEvent.key,
            OutboxEvent.body,
            OutboxEvent.headers,
        ).where(OutboxEvent.published_at.is_(None))
        if topics is not None:
            query = query.where(OutboxEvent.topic.in_(sorted(topics)))
        self._pending: Select[Any] = (
            query.order_by(OutboxEvent.id).limit(batch_size).with_for_update(skip_locked=True)
        )

    # --- one pass ---------------------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Publish up to ``batch_size`` unpublished rows, mark the acknowledged ones; return their count.

        Rows are locked (``FOR UPDATE SKIP LOCKED``) for the pass. When a record fails, the rows
        acknowledged before it are still marked, then the error is raised.
        """
        async with self._session_factory() as session, session.begin():
            rows = (await session.execute(self._pending)).all()
            if not rows:
                return 0
            acked, error = await self._publish(rows)
            if acked:
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_(acked))
                    .values(published_at=func.now())
                    .execution_options(synchronize_session=False)
                )
        metrics.OUTBOX_PUBLISHED.inc(len(acked))
        if error is not None:
            raise error
        return len(acked)

    async def _publish(self, rows: Sequence[Row[Any]]) -> tuple[list[int], BaseException | None]:
        """Send every row in order, then wait for all acks: the ids acked before any failure, and it."""
        pending: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            for row in rows:
                pending.append(await self._enqueue(row))
        except Exception as failure:  # the rows sent before it still count
            error = failure
        if pending:
            await asyncio.wait(pending, timeout=self._ack_timeout_s)
        for future in pending:
            future.add_done_callback(_consume_result)
        acked: list[int] = []
        for row, future in zip(rows, pending, strict=False):
            if not future.done():
                return acked, TimeoutError(f"Kafka did not acknowledge outbox row {row.id} in time")
            if (send_error := future.exception()) is not None:
                return acked, send_error
            acked.append(row.id)
        return acked, error

    async def _enqueue(self, row: Row[Any]) -> asyncio.Future[Any]:
        stored: dict[str, Any] = row.headers or {}
        headers = {str(name): str(value) for name, value in stored.items()}
        headers[HEADER_EVENT_ID] = str(row.event_id)
        headers[HEADER_EVENT_TYPE] = row.event_type
        body: dict[str, Any] = row.body
        # With FastStream's telemetry middleware on the broker, its publish span joins the
        # writer's trace; without it, the stored traceparent travels as it is.
        token = context.attach(propagate.extract(headers)) if stored else None
        try:
            return await self._publisher.enqueue(
                row.topic,
                key=row.key,
                body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
                headers=headers,
                correlation_id=str(body.get("correlation_id") or row.event_id),
            )
        finally:
            if token is not None:
                context.detach(token)

    # --- the long-running loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; only the holder of the advisory lock publishes.

        A standby retries the lock every ``standby_retry_s``. Errors are logged and retried with
        a backoff; the loop only ends when ``stop`` is set (or the task is cancelled).
        """
        backoff = _Backoff(self._max_backoff_s)
        standby_logged = False
        while not stop.is_set():
            try:
                lock = await self._try_lock()
            except Exception:
                logger.exception(
                    "outbox relay cannot reach the database", extra={"retry_in_s": backoff.delay}
                )
                await _sleep(stop, backoff.next())
                continue
            if lock is None:
                if not standby_logged:
                    logger.info("outbox relay on standby: another relay holds lock %s", self._lock_key)
                    standby_logged = True
                await _sleep(stop, self._standby_retry_s)
                continue
            backoff.reset()
            standby_logged = False
            logger.info("outbox relay is publishing (advisory lock %s taken)", self._lock_key)
            try:
                await self._lead(lock, stop)
            except Exception:
                logger.exception("outbox relay lost its lock connection", extra={"retry_in_s": backoff.delay})
                await _sleep(stop, backoff.next())
            finally:
                await self._unlock(lock)

    async def _lead(self, lock: AsyncConnection, stop: asyncio.Event) -> None:
        backoff = _Backoff(self._max_backoff_s)
        while not stop.is_set():
            # The lock lives as long as its connection: a dead connection means another relay
            # may be publishing, so this one must stop (the error leaves the leadership).
            await lock.execute(text("SELECT 1"))
            try:
                published = await self.relay_once()
            except Exception:
                logger.exception("outbox relay pass failed", extra={"retry_in_s": backoff.delay})
                await _sleep(stop, backoff.next())
                continue
            backoff.reset()
            if published == 0:
                await _sleep(stop, self._poll_interval_s)

    def _engine(self) -> AsyncEngine:
        bind = self._session_factory.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("OutboxRelay.run needs a session factory bound to an AsyncEngine")
        return bind

    async def _try_lock(self) -> AsyncConnection | None:
        """A dedicated autocommit connection holding the session-level advisory lock, or None."""
        connection = await self._engine().connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            taken = await connection.scalar(select(func.pg_try_advisory_lock(self._lock_key)))
        except BaseException:
            await connection.invalidate()
            raise
        if taken:
            return connection
        await connection.close()
        return None

    async def _unlock(self, lock: AsyncConnection) -> None:
        try:
            await lock.execute(select(func.pg_advisory_unlock(self._lock_key)))
            await lock.close()
            logger.info("outbox relay released the advisory lock")
        except Exception:
            # Ending the server session releases the lock; never pool a connection that may hold it.
            logger.warning("outbox relay could not release its lock cleanly; dropping the connection")
            with contextlib.suppress(Exception):
                await lock.invalidate()


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
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _consume_result(future: asyncio.Future[Any]) -> None:
    # Retrieve a late failure so asyncio does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()
