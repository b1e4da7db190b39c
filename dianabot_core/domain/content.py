"""Scheduled channel posts: recording them, claiming the due ones, publishing, and recurrence.

A post's lifecycle: ``scheduled`` -> ``published`` | ``failed`` | ``cancelled``. Published and
cancelled are final: a late or retried ``post.scheduled`` never unpublishes a post nor revives a
cancelled one (retries may reorder a post's events, and a cancelled post must never be sent).

A recurring post is a series: its first row has the producer's id, each later occurrence its own
row with the id ``{series}@{slot}``, so creating an occurrence twice finds the same row.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.events import PostFailed, PostPublished, PostScheduled
from dianabot_core.models import Channel, ChannelKind, ChannelPost, PostStatus, PostType, Recurrence

DEFAULT_CLAIM_LIMIT = 50

# What a new post.scheduled may still change; published and cancelled posts are final.
_CHANGEABLE = (PostStatus.DRAFT, PostStatus.SCHEDULED, PostStatus.FAILED)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


async def _channel_id(session: AsyncSession, chat_id: int) -> int:
    """The channel row of a Telegram chat, recorded as a free channel the first time it is seen.

    The VIP channel is set up explicitly (it is what members are removed from); a chat known only
    from a post is treated as public content.
    """
    await session.execute(
        insert(Channel)
        .values(telegram_chat_id=chat_id, kind=ChannelKind.FREE)
        .on_conflict_do_nothing(index_elements=[Channel.telegram_chat_id])
    )
    return (await session.execute(select(Channel.id).where(Channel.telegram_chat_id == chat_id))).scalar_one()


def _by_external_id(external_id: str) -> Select[tuple[ChannelPost]]:
    return (
        select(ChannelPost)
        .where(ChannelPost.external_id == external_id)
        .execution_options(populate_existing=True)
    )


async def upsert_scheduled_post(session: AsyncSession, event: PostScheduled) -> ChannelPost:
    """Record a ``post.scheduled``: create the post, or update it by the producer's ``post_id``.

    An update replaces content, time and recurrence; a failed post is scheduled again.

    ``cancelled=True`` cancels the post unless it is published, and cancels the pending
    occurrences of its series too. Published and cancelled posts are returned unchanged.
    """
    values: dict[str, Any] = {
        "channel_id": await _channel_id(session, event.channel_chat_id),
        "post_type": PostType(event.post_type),
        "content": event.content.model_dump(mode="json"),
        "scheduled_for": event.scheduled_for,
        "recurrence": Recurrence(event.recurrence) if event.recurrence else None,
        "is_protected": event.content.protect_content,
        "status": PostStatus.CANCELLED if event.cancelled else PostStatus.SCHEDULED,
    }
    upsert = (
        insert(ChannelPost)
        .values(external_id=event.post_id, **values)
        .on_conflict_do_update(
            index_elements=[ChannelPost.external_id],
            set_={**values, "updated_at": func.now()},
            where=ChannelPost.status.in_(_CHANGEABLE),
        )
        .returning(ChannelPost)
    )
    post = await session.scalar(upsert, execution_options={"populate_existing": True})
    if event.cancelled:
        await _cancel_pending_occurrences(session, event.post_id)
    # No row returned: the post exists and is final, so it stays as it is.
    return post or (await session.execute(_by_external_id(event.post_id))).scalar_one()


async def _cancel_pending_occurrences(session: AsyncSession, series: str) -> None:
    await session.execute(
        update(ChannelPost)
        .where(
            ChannelPost.external_id.startswith(f"{series}@", autoescape=True),
            ChannelPost.status.in_(_CHANGEABLE),
        )
        .values(status=PostStatus.CANCELLED)
    )


async def claim_due_posts(
    session: AsyncSession, now: datetime, *, limit: int = DEFAULT_CLAIM_LIMIT
) -> list[ChannelPost]:
    """Lock up to ``limit`` scheduled posts due at ``now``, oldest first, for this transaction.

    Rows another transaction has claimed are skipped (``FOR UPDATE SKIP LOCKED``), so concurrent
    publishers never take the same post; once one commits it published, nobody claims it again.
    """
    return list(
        await session.scalars(
            select(ChannelPost)
            .where(ChannelPost.status == PostStatus.SCHEDULED, ChannelPost.scheduled_for <= now)
            .order_by(ChannelPost.scheduled_for, ChannelPost.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )


def _require_scheduled(post: ChannelPost) -> None:
    if post.status != PostStatus.SCHEDULED:
        raise ValueError(f"post {post.id} is {post.status}, not scheduled: claim it first")


async def _chat_id(session: AsyncSession, post: ChannelPost) -> int:
    chat_id = select(Channel.telegram_chat_id).where(Channel.id == post.channel_id)
    return (await session.execute(chat_id)).scalar_one()


def _post_id(post: ChannelPost) -> str:
    return post.external_id or f"post-{post.id}"


async def mark_published(
    session: AsyncSession, post: ChannelPost, message_id: int, at: datetime
) -> PostPublished:
    """Mark a claimed post published with its Telegram message id; returns the event to emit."""
    _require_scheduled(post)
    post.status, post.published_at, post.telegram_message_id = PostStatus.PUBLISHED, at, message_id
    await session.flush()
    return PostPublished(
        post_id=_post_id(post),
        channel_chat_id=await _chat_id(session, post),
        telegram_message_id=message_id,
        published_at=at,
    )


async def mark_failed(session: AsyncSession, post: ChannelPost, reason: str) -> PostFailed:
    """Mark a claimed post failed for good; the reason travels in the returned event (no column)."""
    _require_scheduled(post)
    post.status = PostStatus.FAILED
    await session.flush()
    return PostFailed(post_id=_post_id(post), channel_chat_id=await _chat_id(session, post), reason=reason)


def _next_month(local: datetime, day_of_month: int) -> datetime:
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return local.replace(year=year, month=month, day=min(day_of_month, calendar.monthrange(year, month)[1]))


def next_occurrence(
    post: ChannelPost, *, tz: tzinfo = UTC, day_of_month: int | None = None
) -> datetime | None:
    """The slot after the post's own ``scheduled_for`` (never after "now", so a series never drifts).

    Steps are wall-clock steps in ``tz`` (the bot's timezone), so a 09:00 post stays at 09:00
    across daylight-saving changes. Monthly keeps ``day_of_month`` (default: the post's own day),
    clamped to the month's last day: the 31st gives Feb 28 (29), then Mar 31. None if not recurring.
    """
    local = post.scheduled_for.astimezone(tz)
    if post.recurrence == Recurrence.DAILY:
        following = local + timedelta(days=1)
    elif post.recurrence == Recurrence.WEEKLY:
        following = local + timedelta(weeks=1)
    elif post.recurrence == Recurrence.MONTHLY:
        following = _next_month(local, day_of_month or local.day)
    else:
        return None
    return following.astimezone(UTC)


def _series_id(post: ChannelPost) -> str:
    own_id, suffix = _post_id(post), f"@{_iso(post.scheduled_for)}"
    return own_id.removesuffix(suffix)


async def _series_day(session: AsyncSession, series: str, post: ChannelPost, tz: tzinfo) -> int:
    # The first post of the series holds the day a monthly series keeps; a clamped slot lost it.
    first = await session.scalar(select(ChannelPost.scheduled_for).where(ChannelPost.external_id == series))
    return (first or post.scheduled_for).astimezone(tz).day


async def schedule_next_occurrence(
    session: AsyncSession, post: ChannelPost, *, tz: tzinfo = UTC
) -> ChannelPost | None:
    """Create the next occurrence of a recurring post (or find it, if created before).

    None for a post that does not recur or was cancelled (a cancelled series stops).
    """
    if post.status == PostStatus.CANCELLED:
        return None
    series = _series_id(post)
    day = await _series_day(session, series, post, tz) if post.recurrence == Recurrence.MONTHLY else None
    slot = next_occurrence(post, tz=tz, day_of_month=day)
    if slot is None:
        return None
    external_id = f"{series}@{_iso(slot)}"
    await session.execute(
        insert(ChannelPost)
        .values(
            external_id=external_id,
            channel_id=post.channel_id,
            post_type=post.post_type,
            content=post.content,
            scheduled_for=slot,
            status=PostStatus.SCHEDULED,
            is_protected=post.is_protected,
            recurrence=post.recurrence,
        )
        .on_conflict_do_nothing(index_elements=[ChannelPost.external_id])
    )
    return (await session.execute(_by_external_id(external_id))).scalar_one()
