"""Channel join requests: recorded as they come, approved for free channels after a waiting time.

One row per (chat, Telegram user), as Telegram keeps at most one pending request per pair. A
redelivered request changes nothing; a new request after a decision (the user left and asks
again) opens the row again. Approval claims rows (``FOR UPDATE SKIP LOCKED``) before calling
Telegram, so two runs never approve the same request.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.events import ChannelJoinRequested
from dianabot_core.db import delete_batch
from dianabot_core.models import Channel, ChannelJoinRequest, ChannelKind, JoinRequestStatus

_PENDING = JoinRequestStatus.PENDING


async def record_join_request(session: AsyncSession, event: ChannelJoinRequested) -> bool:
    """Record the request; True when it is new (or newer than a decided one), False for a repeat."""
    row = pg_insert(ChannelJoinRequest).values(
        chat_id=event.chat_id,
        telegram_user_id=event.telegram_user_id,
        requested_at=event.requested_at,
        status=_PENDING,
    )
    stored = ChannelJoinRequest.__table__.c
    result = await session.execute(
        row.on_conflict_do_update(
            index_elements=[stored.chat_id, stored.telegram_user_id],
            set_={"requested_at": row.excluded.requested_at, "status": _PENDING, "decided_at": None},
            # A pending request keeps its first time (the wait runs from it); an older or repeated
            # event never reopens a decided one.
            where=(stored.status != _PENDING) & (stored.requested_at < row.excluded.requested_at),
        ).returning(stored.chat_id)
    )
    return result.first() is not None


async def claim_waiting_requests(
    session: AsyncSession, now: datetime, *, wait: timedelta, limit: int
) -> list[ChannelJoinRequest]:
    """Lock up to ``limit`` pending requests to free channels that waited ``wait`` by ``now``, oldest
    first, for this transaction; rows another run holds are skipped. Other chats' requests (the VIP
    channel lets people in by invite link only) are never approved here."""
    return list(
        await session.scalars(
            select(ChannelJoinRequest)
            .join(Channel, Channel.telegram_chat_id == ChannelJoinRequest.chat_id)
            .where(
                Channel.kind == ChannelKind.FREE,
                ChannelJoinRequest.status == _PENDING,
                ChannelJoinRequest.requested_at <= now - wait,
            )
            .order_by(ChannelJoinRequest.requested_at)
            .limit(limit)
            .with_for_update(of=ChannelJoinRequest, skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )


def decide(request: ChannelJoinRequest, status: JoinRequestStatus, at: datetime) -> None:
    """Record the outcome of a claimed request (committed with the run)."""
    if request.status != _PENDING:
        raise ValueError(f"join request {request.chat_id}/{request.telegram_user_id} is {request.status}")
    request.status = status
    request.decided_at = at


async def purge_join_requests_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of requests decided before ``cutoff``, and of pending ones requested
    before it (Telegram expired those long ago); call until it returns 0."""
    return await delete_batch(
        session,
        ChannelJoinRequest.chat_id,
        ChannelJoinRequest.telegram_user_id,
        where=or_(
            ChannelJoinRequest.decided_at < cutoff,
            (ChannelJoinRequest.status == _PENDING) & (ChannelJoinRequest.requested_at < cutoff),
        ),
        batch_size=batch_size,
    )
