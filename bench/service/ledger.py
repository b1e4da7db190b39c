"""What the service did, read from PostgreSQL: the processed-events ledger and its commit times.

A ledger row is written in the transaction that applies the event's effects (``dianabot_core/pipeline/
ledger.py``), so its commit time is the effect's. The time used is PostgreSQL's commit timestamp
of the row's inserting transaction (``pg_xact_commit_timestamp(xmin)``, which needs
``track_commit_timestamp = on``; the devstack sets it), not the row's ``processed_at``: that
column defaults to ``now()``, the transaction's start, which precedes the commit by the batch's
whole work.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

HANDLED = text("SELECT count(*) FROM processed_events WHERE consumer = :consumer")
COMMITTED_AT = text(
    "SELECT event_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
    "FROM processed_events WHERE consumer = :consumer"
)


class NotExactlyOnceError(RuntimeError):
    """The ledger does not hold exactly the published events for a handler."""


async def require_commit_timestamps(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        setting = await connection.scalar(text("SHOW track_commit_timestamp"))
    if setting != "on":
        raise RuntimeError("PostgreSQL needs track_commit_timestamp = on (devstack/postgres/pg.sh sets it)")


async def handled(engine: AsyncEngine, consumer: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(HANDLED, {"consumer": consumer}) or 0)


async def wait_handled(
    engine: AsyncEngine, consumer: str, total: int, within_s: float, alive: Callable[[], object]
) -> None:
    """Until `consumer` has `total` ledger rows; polled once a second (the poll is load too)."""
    deadline = time.monotonic() + within_s
    while (done := await handled(engine, consumer)) < total:
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer}: {done} of {total} events handled within {within_s:.0f}s")
        await asyncio.sleep(1)


async def commit_times(engine: AsyncEngine, consumer: str) -> dict[UUID, float]:
    """Each handled event's commit time (epoch seconds)."""
    async with engine.connect() as connection:
        rows = await connection.execute(COMMITTED_AT, {"consumer": consumer})
        return {event_id: float(at) for event_id, at in rows}


@dataclass(frozen=True)
class Phase:
    """One handler's ledger rows for one phase's events."""

    consumer: str
    committed_at: dict[UUID, float]  # only this phase's events
    foreign: int  # rows of events the bench did not publish (someone else's records on these topics)

    @classmethod
    async def read(
        cls, engine: AsyncEngine, consumer: str, published: Collection[UUID], before: int
    ) -> Phase:
        """This phase's rows (`before` = the handler's rows when it began); raises unless the
        ledger holds every published event (it cannot hold one twice: it is keyed by event id)."""
        every = await commit_times(engine, consumer)
        mine = {event_id: every[event_id] for event_id in published if event_id in every}
        if len(mine) != len(published):
            raise NotExactlyOnceError(
                f"{consumer}: {len(published)} events published, {len(mine)} of them in the ledger"
            )
        return cls(consumer, mine, len(every) - before - len(mine))

    def drain(self) -> dict[str, Any]:
        """Events per second from the first commit to the last. The first commit's events were
        handled before the span began, so they are not counted in it."""
        times = sorted(self.committed_at.values())
        first, last = times[0], times[-1]
        in_first = sum(1 for t in times if t == first)
        span = last - first
        return {
            "events": len(times),
            "events_per_s": round((len(times) - in_first) / span, 1) if span > 0 else None,
            "first_to_last_commit_s": round(span, 2),
            "transactions": len(set(times)),
            "foreign_events_handled": self.foreign,
        }

    def latency_ms(self, published_at: dict[UUID, float]) -> dict[str, Any]:
        """Publish-to-commit latency percentiles; and whether the handler kept up with the publisher
        (else the latency is mostly queueing): its rate from the first publish to the last commit, and
        how long after the last publish the last commit came."""
        latencies = sorted(1000 * (at - published_at[event_id]) for event_id, at in self.committed_at.items())
        first_published, last_published = min(published_at.values()), max(published_at.values())
        last_commit = max(self.committed_at.values())
        return {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1),
            "events": len(latencies),
            "handled_per_s": round(len(latencies) / (last_commit - first_published), 1),
            "last_commit_after_last_publish_s": round(last_commit - last_published, 2),
            "foreign_events_handled": self.foreign,
        }


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values (nearest rank)."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
