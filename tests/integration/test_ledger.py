"""The processed-events ledger: claims are idempotent, and retention deletes in bounded batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_core.models import ProcessedEvent
from dianabot_core.pipeline import ledger


async def test_claim_returns_only_new_ids_even_with_duplicates_in_the_batch(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    consumer = f"test.ledger.{uuid.uuid4().hex[:8]}"
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session_factory() as session, session.begin():
        assert await ledger.claim(session, consumer, [(a, "x"), (b, "x"), (a, "x")]) == {a, b}
    async with session_factory() as session, session.begin():
        assert await ledger.claim(session, consumer, [(a, "x"), (c, "x")]) == {c}
        # Another consumer's ledger is separate.
        assert await ledger.claim(session, consumer + ".other", [(a, "x")]) == {a}


async def test_purge_deletes_old_rows_in_bounded_batches(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    consumer = f"test.purge.{uuid.uuid4().hex[:8]}"
    old = [(uuid.uuid4(), "x") for _ in range(25)]
    recent = [(uuid.uuid4(), "x") for _ in range(5)]
    async with session_factory() as session, session.begin():
        await ledger.claim(session, consumer, old + recent)
        await session.execute(
            update(ProcessedEvent)
            .where(ProcessedEvent.event_id.in_([i for i, _ in old]))
            .values(processed_at=datetime.now(UTC) - timedelta(days=30))
        )
    cutoff = datetime.now(UTC) - timedelta(days=7)
    deleted_per_batch = []
    while True:
        async with session_factory() as session, session.begin():
            deleted = await ledger.purge_processed_before(session, cutoff, batch_size=10)
        if not deleted:
            break
        deleted_per_batch.append(deleted)
    async with session_factory() as session:
        left = await session.scalar(
            select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.consumer == consumer)
        )
    assert left == len(recent)
    assert all(n <= 10 for n in deleted_per_batch)
    assert sum(deleted_per_batch) >= len(old)  # other tests' old rows may go too; ours all did
