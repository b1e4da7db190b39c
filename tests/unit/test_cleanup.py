"""Jobs' batch loop (`HandlerContext.in_batches`): one short transaction per batch, until a short
batch or the cap."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.services import Retention
from dianabot_core.pipeline.handlers import HandlerContext

CUTOFF = datetime(2026, 1, 1, tzinfo=UTC)


class FakeSessions:
    """Stands in for an async_sessionmaker: counts the transactions opened and committed."""

    def __init__(self) -> None:
        self.opened = 0
        self.committed = 0

    def __call__(self) -> Any:
        return self._session()

    @asynccontextmanager
    async def _session(self) -> Any:
        self.opened += 1
        yield self

    @asynccontextmanager
    async def begin(self) -> Any:
        yield
        self.committed += 1


class ContextWithFakeSessions(HandlerContext[None]):
    def __init__(self, sessions: FakeSessions) -> None:
        object.__setattr__(self, "fake_sessions", sessions)

    def transactions(self) -> async_sessionmaker[AsyncSession]:
        return cast(async_sessionmaker[AsyncSession], self.fake_sessions)  # type: ignore[attr-defined]


def scripted(batches: Sequence[int], calls: list[tuple[datetime, int]]) -> Any:
    remaining = list(batches)

    async def purge(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
        calls.append((cutoff, batch_size))
        return remaining.pop(0)

    return purge


@pytest.mark.parametrize(
    ("batches", "max_batches", "total", "transactions"),
    [
        ([0], 10, 0, 1),  # nothing to delete: one look
        ([3, 3, 1], 10, 7, 3),  # a short batch means nothing is left
        ([3, 3, 0], 10, 6, 3),  # a full batch is followed by one more look
        ([3, 3, 3, 3], 2, 6, 2),  # bounded: the rest waits for the next run
    ],
)
async def test_in_batches_commits_each_batch_and_stops_at_a_short_batch_or_the_cap(
    batches: list[int], max_batches: int, total: int, transactions: int
) -> None:
    sessions = FakeSessions()
    calls: list[tuple[datetime, int]] = []
    retention = Retention(batch_size=3, max_batches=max_batches)

    purge = scripted(batches, calls)
    deleted = await ContextWithFakeSessions(sessions).in_batches(
        lambda session, limit: purge(session, CUTOFF, limit),
        batch_size=retention.batch_size,
        max_batches=retention.max_batches,
    )

    assert deleted == total
    assert calls == [(CUTOFF, 3)] * transactions
    assert sessions.opened == sessions.committed == transactions


def test_default_retention_keeps_the_send_ledger_as_long_as_the_processed_events_ledger() -> None:
    retention = Retention()
    assert retention.telegram_sends >= retention.processed_events
    assert retention.broadcast_recipients >= retention.telegram_sends
