"""The processed-events ledger: idempotency by (consumer, event id).

`claim` inserts ledger rows in the caller's transaction and returns the ids that were new. The
rows commit with the handler's effects, so "processed" and "effect applied" are one fact; a
concurrent claim of the same id waits on the row lock and then sees it as taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ProcessedEvent


async def claim(session: AsyncSession, consumer: str, events: Sequence[tuple[UUID, str]]) -> set[UUID]:
    """Record (event_id, event_type) pairs as processed by `consumer`; return the ids that were new."""
    if not events:
        return set()
    unique = dict(events)  # one row per id even if a batch carries a duplicate
    statement = (
        insert(ProcessedEvent)
        .values([{"consumer": consumer, "event_id": i, "event_type": t} for i, t in unique.items()])
        .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        .returning(ProcessedEvent.event_id)
    )
    result = await session.execute(statement)
    return set(result.scalars())


async def purge_processed_before(session: AsyncSession, cutoff: datetime, batch_size: int = 5000) -> int:
    """Delete one bounded batch of ledger rows older than `cutoff`; call until it returns 0."""
    oldest = (
        select(ProcessedEvent.consumer, ProcessedEvent.event_id)
        .where(ProcessedEvent.processed_at < cutoff)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(ProcessedEvent)
        .where(tuple_(ProcessedEvent.consumer, ProcessedEvent.event_id).in_(oldest))
        .returning(ProcessedEvent.event_id)
    )
    return len(result.all())
