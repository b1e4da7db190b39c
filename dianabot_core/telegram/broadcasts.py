"""Broadcast fan-out and progress: the domain functions behind ``broadcasts_fan_out_task``.

A broadcast is fanned out one keyset page of users at a time. Each step runs in the handler's
unit of work: it locks the broadcast's row, reads the next ``chunk_size`` users after the cursor,
records them as recipients, advances the cursor, and the handler emits one ``NotificationRequested``
per recipient (and, if users remain, a continuation of the ``BroadcastRequested``) through the
outbox. A step commits whole or not at all, so a crash repeats at most the step in progress and no
recipient is queued twice; the notifications' event ids are derived from (broadcast, user), so even a
repeated emission would be dropped as a duplicate.

No record carries a whole audience: a listed one lives in ``broadcast_audience`` (written by the
requester with ``add_broadcast_to_outbox``, or copied there from a short inline list by the first
step), each step reads its page from there and deletes what it went past, and continuations carry
no ids. So a broadcast to any number of users is made of records of bounded size.

Progress comes from the send ledger: a recipient's message is sent, failed, blocked (or skipped
because the user had blocked the bot already), unknown, or still pending.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import BroadcastRequested, MessageContent, Priority
from dianabot_contracts.ids import derived_event_id
from dianabot_core.models import User, UserState
from dianabot_core.outbox import add_to_outbox
from dianabot_core.telegram import metrics
from dianabot_core.telegram.models import (
    Broadcast,
    BroadcastAudience,
    BroadcastRecipient,
    RecipientStatus,
    SendStatus,
    TelegramSend,
)

logger = logging.getLogger("dianabot.telegram.broadcasts")


def notification_key(event_id: uuid.UUID) -> str:
    """The send-ledger key of the message a ``NotificationRequested`` asks for."""
    return f"notification:{event_id}"


def recipient_event_id(broadcast_id: str, user_id: int) -> uuid.UUID:
    """The id of the notification carrying broadcast `broadcast_id` to `user_id`: the same every time."""
    return derived_event_id("broadcast", broadcast_id, user_id)


def continuation_event_id(broadcast_id: str, cursor: int) -> uuid.UUID:
    return derived_event_id("broadcast-continue", broadcast_id, cursor)


@dataclass(frozen=True)
class Recipient:
    user_id: int
    chat_id: int
    event_id: uuid.UUID


@dataclass(frozen=True)
class FanOutStep:
    """One page of a broadcast: who to notify now, and whether the audience is exhausted."""

    broadcast_id: str
    queued: list[Recipient]
    skipped_blocked: int
    cursor: int
    done: bool


# Ids stored per statement: one array parameter each, so a long list is a few round trips.
_AUDIENCE_CHUNK = 10_000


async def add_broadcast_to_outbox(
    session: AsyncSession,
    *,
    broadcast_id: str,
    user_ids: Iterable[int],
    content: MessageContent,
    producer: str,
    priority: Priority = Priority.BULK,
    caused_by: EventEnvelope | None = None,
    topic: str | None = None,
) -> EventEnvelope:
    """Request a broadcast to listed users, however many, in the caller's transaction.

    The ids go to ``broadcast_audience`` and the request (``recipients_stored``) to the outbox, so
    both exist exactly when the caller's transaction commits, and the request's record stays small.
    ``topic`` overrides the registry's topic (tests).
    """
    await store_audience(session, broadcast_id, user_ids)
    request = BroadcastRequested(
        broadcast_id=broadcast_id, audience="list", recipients_stored=True, content=content, priority=priority
    )
    return await add_to_outbox(session, request, producer=producer, caused_by=caused_by, topic=topic)


async def store_audience(session: AsyncSession, broadcast_id: str, user_ids: Iterable[int]) -> None:
    """Add users to a listed broadcast's audience (repeats are ignored)."""
    ids = sorted(set(user_ids))
    for start in range(0, len(ids), _AUDIENCE_CHUNK):
        unnested = func.unnest(
            bindparam("ids", ids[start : start + _AUDIENCE_CHUNK], type_=ARRAY(BigInteger))
        )
        await session.execute(
            insert(BroadcastAudience)
            .from_select(["broadcast_id", "user_id"], select(literal(broadcast_id), unnested))
            .on_conflict_do_nothing()
        )


def continuation_of(event: BroadcastRequested) -> BroadcastRequested:
    """The request that takes the next step: a listed audience is in PostgreSQL by now, not in it."""
    if event.audience != "list":
        return event
    return event.model_copy(update={"user_ids": (), "recipients_stored": True})


def _audience(event: BroadcastRequested, cursor: int, limit: int) -> Select[tuple[int, int, bool]]:
    query = select(User.id, User.telegram_id, User.bot_blocked_at.is_not(None))
    if event.audience == "list":
        listed = BroadcastAudience.broadcast_id == event.broadcast_id
        return (
            query.join(BroadcastAudience, and_(listed, BroadcastAudience.user_id == User.id))
            .where(BroadcastAudience.user_id > cursor)
            .order_by(BroadcastAudience.user_id)
            .limit(limit)
        )
    if event.audience == "all":
        query = query.where(User.state != UserState.BANNED)
    else:
        query = query.where(User.state == UserState(event.audience))
    return query.where(User.id > cursor).order_by(User.id).limit(limit)


async def fan_out_step(session: AsyncSession, event: BroadcastRequested, *, chunk_size: int) -> FanOutStep:
    """Queue the next page of recipients (in the caller's transaction); see the module docstring."""
    await session.execute(
        insert(Broadcast)
        .values(
            broadcast_id=event.broadcast_id,
            audience=event.audience,
            priority=event.priority.value,
            request=event.model_dump(mode="json"),
        )
        .on_conflict_do_nothing(index_elements=[Broadcast.broadcast_id])
    )
    # The row lock serialises steps of one broadcast (a duplicate request, a redelivery).
    broadcast = (
        await session.execute(
            select(Broadcast.cursor_user_id, Broadcast.fanned_out_at)
            .where(Broadcast.broadcast_id == event.broadcast_id)
            .with_for_update()
        )
    ).one()
    if broadcast.fanned_out_at is not None:
        return FanOutStep(event.broadcast_id, [], 0, broadcast.cursor_user_id, done=True)
    if event.user_ids:  # an inline list (again, for a redelivery: repeats are ignored)
        await store_audience(session, event.broadcast_id, event.user_ids)
    users = (await session.execute(_audience(event, broadcast.cursor_user_id, chunk_size))).all()
    queued, skipped = await _record_recipients(session, event.broadcast_id, users)
    cursor = users[-1][0] if users else broadcast.cursor_user_id
    done = len(users) < chunk_size
    if event.audience == "list":
        await _forget_audience(session, event.broadcast_id, None if done else cursor)
    await session.execute(
        update(Broadcast)
        .where(Broadcast.broadcast_id == event.broadcast_id)
        .values(
            cursor_user_id=cursor,
            queued=Broadcast.queued + len(queued),
            skipped_blocked=Broadcast.skipped_blocked + skipped,
            fanned_out_at=func.now() if done else None,
        )
    )
    metrics.BROADCAST_RECIPIENTS.labels(RecipientStatus.QUEUED.value).inc(len(queued))
    metrics.BROADCAST_RECIPIENTS.labels(RecipientStatus.SKIPPED_BLOCKED.value).inc(skipped)
    return FanOutStep(event.broadcast_id, queued, skipped, cursor, done)


async def _forget_audience(session: AsyncSession, broadcast_id: str, up_to: int | None) -> None:
    """Delete the audience rows a step went past (all of them once the fan-out is done)."""
    rows = delete(BroadcastAudience).where(BroadcastAudience.broadcast_id == broadcast_id)
    if up_to is not None:
        rows = rows.where(BroadcastAudience.user_id <= up_to)
    await session.execute(rows)


async def _record_recipients(
    session: AsyncSession, broadcast_id: str, users: Sequence[Row[tuple[int, int, bool]]]
) -> tuple[list[Recipient], int]:
    rows = []
    for user_id, chat_id, blocked in users:
        event_id = recipient_event_id(broadcast_id, user_id)
        rows.append(
            {
                "broadcast_id": broadcast_id,
                "user_id": user_id,
                "chat_id": chat_id,
                "status": RecipientStatus.SKIPPED_BLOCKED if blocked else RecipientStatus.QUEUED,
                "event_id": None if blocked else event_id,
                "send_key": None if blocked else notification_key(event_id),
            }
        )
    if not rows:
        return [], 0
    inserted = await session.execute(
        insert(BroadcastRecipient)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(
            BroadcastRecipient.user_id,
            BroadcastRecipient.chat_id,
            BroadcastRecipient.event_id,
            BroadcastRecipient.status,
        )
    )
    queued: list[Recipient] = []
    skipped = 0
    for user_id, chat_id, event_id, status in inserted:
        if RecipientStatus(status) is RecipientStatus.QUEUED:
            queued.append(Recipient(user_id, chat_id, event_id))
        else:
            skipped += 1
    queued.sort(key=lambda r: r.user_id)
    return queued, skipped


# --- progress ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BroadcastProgress:
    broadcast_id: str
    audience: str
    fanned_out: bool
    recipients: int
    sent: int
    failed: int
    blocked: int
    unknown: int

    @property
    def pending(self) -> int:
        return self.recipients - self.sent - self.failed - self.blocked - self.unknown

    @property
    def finished(self) -> bool:
        return self.fanned_out and self.pending == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "broadcast_id": self.broadcast_id,
            "audience": self.audience,
            "fanned_out": self.fanned_out,
            "recipients": self.recipients,
            "sent": self.sent,
            "failed": self.failed,
            "blocked": self.blocked,
            "unknown": self.unknown,
            "pending": self.pending,
        }


async def broadcast_progress(
    session: AsyncSession, broadcast_id: str, *, lease_s: float = 30.0
) -> BroadcastProgress | None:
    """Where a broadcast stands (for the CLI, logs and metrics); None if it is not known."""
    head = (
        await session.execute(
            select(Broadcast.audience, Broadcast.fanned_out_at).where(Broadcast.broadcast_id == broadcast_id)
        )
    ).one_or_none()
    if head is None:
        return None
    stale = func.now() - timedelta(seconds=lease_s)
    status = TelegramSend.status

    def count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    row = (
        await session.execute(
            select(
                func.count(),
                count_where(status == SendStatus.SENT),
                count_where(status == SendStatus.FAILED),
                count_where(
                    or_(
                        BroadcastRecipient.status == RecipientStatus.SKIPPED_BLOCKED,
                        status == SendStatus.BLOCKED,
                    )
                ),
                count_where(
                    or_(
                        status == SendStatus.UNKNOWN,
                        and_(status == SendStatus.PENDING, TelegramSend.attempted_at < stale),
                    )
                ),
            )
            .select_from(BroadcastRecipient)
            .outerjoin(TelegramSend, TelegramSend.send_key == BroadcastRecipient.send_key)
            .where(BroadcastRecipient.broadcast_id == broadcast_id)
        )
    ).one()
    total, sent, failed, blocked, unknown = (int(v) for v in row)
    return BroadcastProgress(
        broadcast_id, head.audience, head.fanned_out_at is not None, total, sent, failed, blocked, unknown
    )


async def broadcasts_of(session: AsyncSession, send_keys: list[str]) -> set[str]:
    """The broadcasts some messages belong to (their notifications' send keys)."""
    if not send_keys:
        return set()
    rows = await session.scalars(
        select(BroadcastRecipient.broadcast_id).where(BroadcastRecipient.send_key.in_(send_keys)).distinct()
    )
    return set(rows)


class ProgressReporter:
    """Logs a broadcast's progress and exports it as gauges, at most every `every_s` per broadcast."""

    def __init__(self, *, every_s: float = 5.0, lease_s: float = 30.0) -> None:
        self._every_s = every_s
        self._lease_s = lease_s
        self._last: dict[str, float] = {}

    async def report(self, session: AsyncSession, broadcast_id: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last.get(broadcast_id, -1e9) < self._every_s:
            return
        self._last[broadcast_id] = now
        progress = await broadcast_progress(session, broadcast_id, lease_s=self._lease_s)
        if progress is None:
            return
        logger.info("broadcast progress", extra={"broadcast": progress.as_dict()})
        if progress.finished:
            for name in ("sent", "failed", "blocked", "unknown", "pending"):
                _remove_gauge(broadcast_id, name)
            self._last.pop(broadcast_id, None)
            return
        for name in ("sent", "failed", "blocked", "unknown", "pending"):
            metrics.BROADCAST_PROGRESS.labels(broadcast_id, name).set(getattr(progress, name))


def _remove_gauge(broadcast_id: str, status: str) -> None:
    with contextlib.suppress(KeyError):
        metrics.BROADCAST_PROGRESS.remove(broadcast_id, status)


async def purge_recipients_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of recipient rows of broadcasts fanned out before ``cutoff``.

    The broadcast's own row stays, with its counts; only the per-user rows (one per recipient,
    the bulk of the table) go once their sends are past the send ledger's retention too.
    """
    oldest = (
        select(BroadcastRecipient.broadcast_id, BroadcastRecipient.user_id)
        .join(Broadcast, Broadcast.broadcast_id == BroadcastRecipient.broadcast_id)
        .where(Broadcast.fanned_out_at < cutoff)
        .limit(batch_size)
        .with_for_update(of=BroadcastRecipient, skip_locked=True)
    )
    result = await session.execute(
        delete(BroadcastRecipient)
        .where(tuple_(BroadcastRecipient.broadcast_id, BroadcastRecipient.user_id).in_(oldest))
        .returning(BroadcastRecipient.user_id)
    )
    return len(result.all())
