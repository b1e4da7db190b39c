"""The VIP subscription lifecycle: expiry reminders, expiry, removal from the channel, archiving.

Renewal extends ``end_at`` on the same row, and the database allows one active subscription per
user, so "the user renewed" always reads as "this row is active with ``end_at`` in the future"
(or, after expiry, "the user has an active subscription again").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import DateTime, Exists, Text, case, cast, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.events import SubscriptionExpired, SubscriptionExpiring
from dianabot_contracts.ids import derived_event_id
from dianabot_core.db import delete_batch
from dianabot_core.models import Subscription, SubscriptionStatus, User, UserState, VipInviteLink

DEFAULT_REMINDER_WINDOWS: tuple[timedelta, ...] = (timedelta(days=7), timedelta(days=1))
DEFAULT_ARCHIVE_AFTER = timedelta(days=30)
DEFAULT_BATCH = 500

_ACTIVE = SubscriptionStatus.ACTIVE
_EXPIRED = SubscriptionStatus.EXPIRED


def _iso(moment: datetime) -> str:
    # One spelling per instant, whatever offset the caller's datetime carries.
    return moment.astimezone(UTC).isoformat()


def reminder_kind(window: timedelta) -> str:
    """The label a window's reminders are announced and recorded under: '7d', '1d', '12h', '30m'."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        raise ValueError(f"a reminder window must be positive, got {window}")
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class ReminderDue:
    """A subscription owed the reminder of one window for its current ``end_at``."""

    subscription_id: int
    user_id: int
    end_at: datetime
    kind: str

    @property
    def event_id(self) -> UUID:
        """The same subscription, cycle and window always give the same id: one reminder, ever."""
        return derived_event_id(
            SubscriptionExpiring.event_type, self.subscription_id, _iso(self.end_at), self.kind
        )

    def payload(self) -> SubscriptionExpiring:
        return SubscriptionExpiring(
            user_id=self.user_id, subscription_id=self.subscription_id, end_at=self.end_at, reminder=self.kind
        )


@dataclass(frozen=True)
class ExpiredSubscription:
    """A subscription just marked expired; the handler of its event removes the user."""

    subscription_id: int
    user_id: int
    end_at: datetime

    @property
    def event_id(self) -> UUID:
        """Deterministic per subscription and cycle, so a repeated expiry run emits a duplicate."""
        return derived_event_id(SubscriptionExpired.event_type, self.subscription_id, _iso(self.end_at))

    def payload(self) -> SubscriptionExpired:
        return SubscriptionExpired(
            user_id=self.user_id, subscription_id=self.subscription_id, end_at=self.end_at
        )


async def reminders_due(
    session: AsyncSession,
    now: datetime,
    windows: Sequence[timedelta] = DEFAULT_REMINDER_WINDOWS,
    *,
    limit: int = DEFAULT_BATCH,
    after_id: int = 0,
) -> list[ReminderDue]:
    """Active subscriptions inside a reminder window whose reminder for this ``end_at`` is unsent.

    Only the narrowest window containing ``now`` counts: a subscription 12 hours from its end gets
    the '1d' reminder, never a late '7d' one. Lifetime plans have no ``end_at`` and never match.
    Pages by id: pass the last id returned as ``after_id`` (with the same ``now``) for the next page.
    """
    ordered = sorted(windows)
    if not ordered:
        return []
    kind = case(*((Subscription.end_at <= now + w, reminder_kind(w)) for w in ordered))
    # reminders_sent maps kind -> the end_at it was sent for: after a renewal it no longer matches.
    sent_for = cast(Subscription.reminders_sent.op("->>", return_type=Text)(kind), DateTime(timezone=True))
    rows = await session.execute(
        select(Subscription.id, Subscription.user_id, Subscription.end_at, kind)
        .where(
            Subscription.status == _ACTIVE,
            Subscription.end_at > now,
            Subscription.end_at <= now + ordered[-1],
            Subscription.id > after_id,
            sent_for.is_distinct_from(Subscription.end_at),
        )
        .order_by(Subscription.id)
        .limit(limit)
    )
    return [ReminderDue(sub_id, user_id, end_at, label) for sub_id, user_id, end_at, label in rows]


async def mark_reminder_sent(
    session: AsyncSession, subscription_id: int, kind: str, end_at: datetime
) -> None:
    """Record that the ``kind`` reminder went out for the cycle ending at ``end_at``."""
    entry = func.jsonb_build_object(kind, _iso(end_at))
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id)
        .values(reminders_sent=Subscription.reminders_sent.op("||", return_type=JSONB)(entry))
    )


async def expire_ended(
    session: AsyncSession, now: datetime, *, limit: int = DEFAULT_BATCH
) -> list[ExpiredSubscription]:
    """Mark up to ``limit`` active subscriptions with ``end_at <= now`` expired, and return them.

    Rows another transaction holds (a renewal in flight, a concurrent run) are skipped, not waited
    for; a renewed row has ``end_at`` in the future and is not selected.
    """
    ended = (
        select(Subscription.id)
        .where(Subscription.status == _ACTIVE, Subscription.end_at <= now)
        .order_by(Subscription.end_at, Subscription.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(ended.scalar_subquery()))
        .values(status=_EXPIRED)
        .returning(Subscription.id, Subscription.user_id, Subscription.end_at)
    )
    return sorted(
        (ExpiredSubscription(sub_id, user_id, end_at) for sub_id, user_id, end_at in rows),
        key=lambda e: (e.end_at, e.subscription_id),
    )


def _has_active_subscription(user_id: object) -> Exists:
    return exists().where(Subscription.user_id == user_id, Subscription.status == _ACTIVE)


async def should_kick(session: AsyncSession, subscription_id: int) -> bool:
    """True when the user must leave the VIP channel: still expired, not kicked, nothing active.

    Locks the subscription and its user until the caller's transaction ends, so call it in the
    transaction that records the kick: a renewal of this row, or a new subscription (its foreign
    key check needs the user row), waits until then and its unban follows the ban.
    """
    sub = await session.scalar(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if sub is None or sub.status != _EXPIRED or sub.kicked_from_channel_at is not None:
        return False
    await session.execute(select(User.id).where(User.id == sub.user_id).with_for_update())
    return not await session.scalar(select(_has_active_subscription(sub.user_id)))


async def record_kicked(session: AsyncSession, subscription_id: int, at: datetime) -> None:
    """Record the removal from the channel; the first recorded time is kept."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.kicked_from_channel_at.is_(None))
        .values(kicked_from_channel_at=at)
    )


async def set_user_free(session: AsyncSession, user_id: int) -> bool:
    """VIP back to free, unless the user has an active subscription again; True when changed."""
    changed = await session.execute(
        update(User)
        .where(User.id == user_id, User.state == UserState.VIP, ~_has_active_subscription(User.id))
        .values(state=UserState.FREE)
        .returning(User.id)
    )
    return changed.first() is not None


async def set_user_vip(session: AsyncSession, user_id: int) -> bool:
    """Free to VIP; a user banned from the bot stays banned. True when changed."""
    changed = await session.execute(
        update(User)
        .where(User.id == user_id, User.state == UserState.FREE)
        .values(state=UserState.VIP)
        .returning(User.id)
    )
    return changed.first() is not None


async def archive_expired(
    session: AsyncSession,
    now: datetime,
    *,
    older_than: timedelta = DEFAULT_ARCHIVE_AFTER,
    limit: int = DEFAULT_BATCH,
) -> int:
    """Archive up to ``limit`` expired subscriptions that ended before ``now - older_than``.

    Returns how many were archived; the job repeats until 0. Archived rows are never picked again.
    """
    batch = (
        select(Subscription.id)
        .where(
            Subscription.status == _EXPIRED,
            Subscription.archived_at.is_(None),
            Subscription.end_at <= now - older_than,
        )
        .order_by(Subscription.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    archived = await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(batch.scalar_subquery()))
        .values(archived_at=now)
        .returning(Subscription.id)
    )
    return len(archived.all())


# --- invite links --------------------------------------------------------------------------------


async def record_invite_link(
    session: AsyncSession,
    *,
    user_id: int,
    subscription_id: int,
    invite_link: str,
    name: str | None,
    expires_at: datetime,
) -> None:
    """Record a link just created, in the grant's transaction: it exists in the table iff the grant
    committed (a grant rolled back and retried records the new link it creates instead)."""
    await session.execute(
        insert(VipInviteLink).values(
            user_id=user_id,
            subscription_id=subscription_id,
            invite_link=invite_link,
            name=name,
            expires_at=expires_at,
        )
    )


async def purge_expired_invite_links_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of invite links that expired before ``cutoff``; call until it returns 0."""
    return await delete_batch(
        session, VipInviteLink.id, where=VipInviteLink.expires_at < cutoff, batch_size=batch_size
    )
