"""The processed-events ledger: idempotency by (consumer, event id).

`claim` inserts ledger rows in the caller's transaction and returns the ids that were new. The
rows commit with the handler's effects, so "processed" and "effect applied" are one fact; a
concurrent claim of the same id waits on the row lock and then sees it as taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_core.db import delete_batch
from dianabot_core.models import ProcessedEvent

# One statement shape for any batch size: compiled and prepared once, one round trip per batch.
_CLAIM = text(
    """
    INSERT INTO processed_events (consumer, event_id, event_type)
    SELECT :consumer, e.event_id, e.event_type
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:event_types AS text[])) AS e(event_id, event_type)
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING event_id
    """
)


async def claim(session: AsyncSession, consumer: str, events: Sequence[tuple[UUID, str]]) -> set[UUID]:
    """Record (event_id, event_type) pairs as processed by `consumer`; return the ids that were new."""
    if not events:
        return set()
    unique = dict(events)  # one row per id even if a batch carries a duplicate
    result = await session.execute(
        _CLAIM, {"consumer": consumer, "event_ids": list(unique), "event_types": list(unique.values())}
    )
    return set(result.scalars())


_RELEASE = text(
    "DELETE FROM processed_events WHERE consumer = :consumer AND event_id = ANY(CAST(:event_ids AS uuid[]))"
)


async def release(session: AsyncSession, consumer: str, event_ids: Sequence[UUID]) -> None:
    """Take back claims made in this transaction for events it will not handle after all."""
    if event_ids:
        await session.execute(_RELEASE, {"consumer": consumer, "event_ids": list(event_ids)})


async def purge_processed_before(session: AsyncSession, cutoff: datetime, batch_size: int = 5000) -> int:
    """Delete one bounded batch of ledger rows older than `cutoff`; call until it returns 0."""
    return await delete_batch(
        session,
        ProcessedEvent.consumer,
        ProcessedEvent.event_id,
        where=ProcessedEvent.processed_at < cutoff,
        batch_size=batch_size,
    )
