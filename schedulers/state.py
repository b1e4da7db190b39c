"""The scheduler's state in PostgreSQL: each job's last slot, advanced in the transaction emitting its ticks.

Emitting is one transaction per job: compare-and-set the job's ``last_slot`` and add the ticks to
the outbox. So a tick exists exactly when the cursor moved past its slot: a crash before the
commit leaves neither (the next leader emits the slot), a crash after leaves both (the next
leader starts after it). A stale leader's compare-and-set fails, so it emits nothing; and each
tick's ``event_id`` is derived from (job, slot), so even a slot emitted twice would be one event
to every consumer's ledger, and the outbox's unique ``event_id`` would refuse the second row.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.ids import derived_event_id, uuid7
from dianabot_core.jobs import SchedulerJobState
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import add_to_outbox
from schedulers.planning import PlannedTick

PRODUCER = "dianabot-scheduler"


def tick_event_id(job: str, slot: datetime) -> UUID:
    """The id of the tick for ``job`` at ``slot``: the same from every replica, every time."""
    return derived_event_id(job, slot.astimezone(UTC).isoformat())


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TickStore(Protocol):
    async def load(self, initial: Mapping[str, datetime]) -> dict[str, datetime]:
        """Each job's last slot; jobs without state start at ``initial[job]``."""
        ...

    async def advance(
        self, job: str, expected: datetime, last_slot: datetime, ticks: Sequence[PlannedTick]
    ) -> bool:
        """Move ``job`` from ``expected`` to ``last_slot`` and emit ``ticks``; False if it was elsewhere."""
        ...


class PgTickStore:
    """``TickStore`` on PostgreSQL: ``scheduler_job_state`` plus the transactional outbox."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        topic: str,
        owner: str | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._topic = topic
        self._owner = owner or replica_name()

    async def load(self, initial: Mapping[str, datetime]) -> dict[str, datetime]:
        async with self._session_factory() as session, session.begin():
            if initial:
                await session.execute(
                    insert(SchedulerJobState)
                    .values([{"job": job, "last_slot": slot} for job, slot in initial.items()])
                    .on_conflict_do_nothing(index_elements=[SchedulerJobState.job])
                )
            rows = await session.execute(
                select(SchedulerJobState.job, SchedulerJobState.last_slot).where(
                    SchedulerJobState.job.in_(list(initial))
                )
            )
            return {job: last_slot for job, last_slot in rows}

    async def advance(
        self, job: str, expected: datetime, last_slot: datetime, ticks: Sequence[PlannedTick]
    ) -> bool:
        async with self._session_factory() as session, session.begin():
            moved = await session.scalar(
                update(SchedulerJobState)
                .where(SchedulerJobState.job == job, SchedulerJobState.last_slot == expected)
                .values(last_slot=last_slot, emitted_by=self._owner)
                .returning(SchedulerJobState.job)
            )
            if moved is None:
                return False
            ids = {tick.slot: tick_event_id(job, tick.slot) for tick in ticks}
            existing = await _existing_ids(session, ids.values())
            for tick in ticks:
                if ids[tick.slot] not in existing:
                    await add_to_outbox(
                        session,
                        SchedulerTick(job=job, slot=tick.slot, kind=tick.kind),
                        producer=PRODUCER,
                        event_id=ids[tick.slot],
                        topic=self._topic,
                    )
        return True

    async def trigger(self, job: str, now: datetime) -> EventEnvelope:
        """A manual tick: slot = now, a fresh event id (never a duplicate of a scheduled tick)."""
        async with self._session_factory() as session, session.begin():
            return await add_to_outbox(
                session,
                SchedulerTick(job=job, slot=now, kind="manual"),
                producer=PRODUCER,
                event_id=uuid7(),
                topic=self._topic,
            )


async def _existing_ids(session: AsyncSession, ids: Iterable[UUID]) -> set[UUID]:
    wanted = list(ids)
    if not wanted:
        return set()
    rows = await session.scalars(select(OutboxEvent.event_id).where(OutboxEvent.event_id.in_(wanted)))
    return set(rows)
