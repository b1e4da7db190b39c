"""The channel post rules (dianabot_core.domain.content) on the real PostgreSQL.

The test database is shared and claiming scans the whole table, so each test schedules its posts
in its own random stretch of the distant past (nothing else is due there), in a channel with a
random chat id. Most tests roll back; the ones that need two connections commit and delete their
channel (and so its posts) afterwards.
"""

from __future__ import annotations

import asyncio
import calendar
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.events import MessageContent, PostScheduled
from dianabot_core.domain.content import (
    claim_due_posts,
    mark_failed,
    mark_published,
    schedule_next_occurrence,
    upsert_scheduled_post,
)
from dianabot_core.models import Channel, ChannelKind, ChannelPost, PostStatus

MINUTE = timedelta(minutes=1)


def _era() -> datetime:
    """A random instant between the years 1000 and 1900: this test's own stretch of time."""
    return datetime(1000, 1, 1, 9, tzinfo=UTC) + timedelta(days=random.randint(0, 900 * 365))


def _chat_id() -> int:
    return -random.randint(10**12, 2**62)


def _post_id() -> str:
    return f"test-post-{random.randint(10**12, 2**62)}"


def _scheduled(chat_id: int, at: datetime, post_id: str | None = None, **changes: Any) -> PostScheduled:
    values: dict[str, Any] = {
        "post_id": post_id or _post_id(),
        "channel_chat_id": chat_id,
        "post_type": "narrative",
        "content": MessageContent(text="Capítulo 1"),
        "scheduled_for": at,
    }
    return PostScheduled(**(values | changes))


@pytest.fixture
async def session(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction, rolled back after the test: nothing is left in the shared database."""
    async with session_factory() as session:
        try:
            yield session
        finally:
            await session.rollback()


@pytest.fixture
async def committed_chat(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[int]:
    """A chat id whose channel (and posts) tests may commit; deleted afterwards."""
    chat_id = _chat_id()
    yield chat_id
    async with session_factory() as cleanup:
        await cleanup.execute(delete(Channel).where(Channel.telegram_chat_id == chat_id))
        await cleanup.commit()


def _mine(posts: list[ChannelPost], chat_posts: list[ChannelPost]) -> list[int]:
    ids = {p.id for p in chat_posts}
    return [p.id for p in posts if p.id in ids]


# --- recording post.scheduled --------------------------------------------------------------------


async def test_a_scheduled_post_is_recorded_in_a_new_free_channel(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    content = MessageContent(text="Hola", protect_content=True)

    post = await upsert_scheduled_post(session, _scheduled(chat_id, at, content=content, recurrence="weekly"))

    channel = await session.get_one(Channel, post.channel_id)
    assert (channel.telegram_chat_id, channel.kind) == (chat_id, ChannelKind.FREE)
    assert (post.status, post.scheduled_for, post.recurrence) == ("scheduled", at, "weekly")
    assert post.content["text"] == "Hola"
    assert post.is_protected


async def test_an_existing_channel_keeps_its_kind(session: AsyncSession) -> None:
    chat_id = _chat_id()
    session.add(Channel(telegram_chat_id=chat_id, kind=ChannelKind.VIP))
    await session.flush()

    post = await upsert_scheduled_post(session, _scheduled(chat_id, _era()))

    assert (await session.get_one(Channel, post.channel_id)).kind == ChannelKind.VIP


async def test_an_update_replaces_content_and_time(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    first = await upsert_scheduled_post(session, _scheduled(chat_id, at))

    updated = await upsert_scheduled_post(
        session,
        _scheduled(chat_id, at + MINUTE, first.external_id, content=MessageContent(text="Capítulo 2")),
    )

    assert updated.id == first.id
    assert (updated.content["text"], updated.scheduled_for, updated.status) == (
        "Capítulo 2",
        at + MINUTE,
        "scheduled",
    )


async def test_a_cancelled_post_stays_cancelled(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    post = await upsert_scheduled_post(session, _scheduled(chat_id, at))

    cancelled = await upsert_scheduled_post(
        session, _scheduled(chat_id, at, post.external_id, cancelled=True)
    )
    late_update = await upsert_scheduled_post(session, _scheduled(chat_id, at + MINUTE, post.external_id))

    assert cancelled.status == late_update.status == PostStatus.CANCELLED
    assert late_update.scheduled_for == at
    assert _mine(await claim_due_posts(session, at + MINUTE), [post]) == []


async def test_a_published_post_is_neither_cancelled_nor_changed(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    post = await upsert_scheduled_post(session, _scheduled(chat_id, at))
    [claimed] = _claimed(await claim_due_posts(session, at), post)
    await mark_published(session, claimed, 501, at + MINUTE)

    update = _scheduled(chat_id, at + MINUTE, post.external_id, content=MessageContent(text="otro"))
    after_update = await upsert_scheduled_post(session, update)
    after_cancel = await upsert_scheduled_post(
        session, _scheduled(chat_id, at, post.external_id, cancelled=True)
    )

    for seen in (after_update, after_cancel):
        assert (seen.status, seen.telegram_message_id, seen.content["text"]) == (
            "published",
            501,
            "Capítulo 1",
        )


async def test_cancelling_a_post_not_seen_before_records_it_cancelled(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    post_id = _post_id()

    cancelled = await upsert_scheduled_post(session, _scheduled(chat_id, at, post_id, cancelled=True))
    late_schedule = await upsert_scheduled_post(session, _scheduled(chat_id, at, post_id))

    assert cancelled.status == late_schedule.status == PostStatus.CANCELLED


# --- claiming and publishing ---------------------------------------------------------------------


def _claimed(posts: list[ChannelPost], *mine: ChannelPost) -> list[ChannelPost]:
    ids = {p.id for p in mine}
    return [p for p in posts if p.id in ids]


async def test_claims_take_due_scheduled_posts_oldest_first(session: AsyncSession) -> None:
    chat_id, now = _chat_id(), _era()
    later = await upsert_scheduled_post(session, _scheduled(chat_id, now - MINUTE))
    earlier = await upsert_scheduled_post(session, _scheduled(chat_id, now - 2 * MINUTE))
    due_now = await upsert_scheduled_post(session, _scheduled(chat_id, now))
    future = await upsert_scheduled_post(session, _scheduled(chat_id, now + MINUTE))
    cancelled = await upsert_scheduled_post(session, _scheduled(chat_id, now - MINUTE, cancelled=True))

    claimed = await claim_due_posts(session, now)

    assert _mine(claimed, [later, earlier, due_now, future, cancelled]) == [earlier.id, later.id, due_now.id]
    assert len(await claim_due_posts(session, now, limit=2)) == 2


async def test_concurrent_claims_never_take_the_same_post(
    session_factory: async_sessionmaker[AsyncSession], committed_chat: int
) -> None:
    now = _era()
    async with session_factory() as setup:
        posts = [
            await upsert_scheduled_post(setup, _scheduled(committed_chat, now - i * MINUTE)) for i in range(6)
        ]
        await setup.commit()

    async with session_factory() as first, session_factory() as second:
        # Both transactions stay open (holding their locks) until both have claimed.
        claims = await asyncio.gather(
            claim_due_posts(first, now, limit=4), claim_due_posts(second, now, limit=4)
        )
        a, b = (set(_mine(claim, posts)) for claim in claims)
        await first.rollback()
        await second.rollback()

    assert not a & b
    assert a | b == {p.id for p in posts}


async def test_a_post_published_once_is_not_claimed_again(
    session_factory: async_sessionmaker[AsyncSession], committed_chat: int
) -> None:
    now = _era()
    async with session_factory() as setup:
        post = await upsert_scheduled_post(setup, _scheduled(committed_chat, now))
        await setup.commit()

    async with session_factory() as publisher:
        [claimed] = _claimed(await claim_due_posts(publisher, now), post)
        event = await mark_published(publisher, claimed, 777, now + MINUTE)
        await publisher.commit()
    async with session_factory() as second_publisher:
        again = _claimed(await claim_due_posts(second_publisher, now + 10 * MINUTE), post)
        await second_publisher.rollback()

    assert again == []
    assert (event.post_id, event.channel_chat_id, event.telegram_message_id) == (
        post.external_id,
        committed_chat,
        777,
    )
    async with session_factory() as check:
        stored = (await check.execute(select(ChannelPost).where(ChannelPost.id == post.id))).scalar_one()
    assert (stored.status, stored.telegram_message_id, stored.published_at) == (
        "published",
        777,
        now + MINUTE,
    )


async def test_a_failed_post_reports_why_and_is_not_claimed_again(session: AsyncSession) -> None:
    chat_id, now = _chat_id(), _era()
    post = await upsert_scheduled_post(session, _scheduled(chat_id, now))
    [claimed] = _claimed(await claim_due_posts(session, now), post)

    event = await mark_failed(session, claimed, "chat not found")

    assert (event.post_id, event.channel_chat_id, event.reason) == (
        post.external_id,
        chat_id,
        "chat not found",
    )
    assert claimed.status == PostStatus.FAILED
    assert _claimed(await claim_due_posts(session, now), post) == []
    with pytest.raises(ValueError, match="not scheduled"):
        await mark_published(session, claimed, 1, now)
    rescheduled = await upsert_scheduled_post(session, _scheduled(chat_id, now, post.external_id))
    assert rescheduled.status == PostStatus.SCHEDULED  # the producer may try again


# --- recurrence ----------------------------------------------------------------------------------


async def _publish(session: AsyncSession, post: ChannelPost) -> ChannelPost:
    [claimed] = _claimed(await claim_due_posts(session, post.scheduled_for), post)
    await mark_published(session, claimed, random.randint(1, 10**6), post.scheduled_for)
    return claimed


async def test_a_daily_post_gets_its_next_occurrence_once(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    post = await _publish(
        session, await upsert_scheduled_post(session, _scheduled(chat_id, at, recurrence="daily"))
    )

    following = await schedule_next_occurrence(session, post)
    again = await schedule_next_occurrence(session, post)

    assert following is not None
    assert again is not None
    assert again.id == following.id
    assert following.external_id == f"{post.external_id}@{(at + timedelta(days=1)).isoformat()}"
    assert (following.status, following.scheduled_for, following.recurrence) == (
        "scheduled",
        at + timedelta(days=1),
        "daily",
    )
    assert (following.content, following.channel_id) == (post.content, post.channel_id)

    third = await schedule_next_occurrence(session, await _publish(session, following))
    assert third is not None
    assert third.external_id == f"{post.external_id}@{(at + timedelta(days=2)).isoformat()}"  # not nested


async def test_a_monthly_series_clamps_to_month_end_and_keeps_its_day(session: AsyncSession) -> None:
    chat_id = _chat_id()
    year = _era().year
    jan_31 = datetime(year, 1, 31, 20, tzinfo=UTC)
    post = await upsert_scheduled_post(session, _scheduled(chat_id, jan_31, recurrence="monthly"))

    february = await schedule_next_occurrence(session, await _publish(session, post))
    assert february is not None
    march = await schedule_next_occurrence(session, await _publish(session, february))
    assert march is not None

    assert february.scheduled_for == datetime(year, 2, 29 if calendar.isleap(year) else 28, 20, tzinfo=UTC)
    assert march.scheduled_for == datetime(year, 3, 31, 20, tzinfo=UTC)


async def test_a_one_off_post_has_no_next_occurrence(session: AsyncSession) -> None:
    post = await upsert_scheduled_post(session, _scheduled(_chat_id(), _era()))

    assert await schedule_next_occurrence(session, await _publish(session, post)) is None


async def test_cancelling_a_series_cancels_its_pending_occurrence(session: AsyncSession) -> None:
    chat_id, at = _chat_id(), _era()
    event = _scheduled(chat_id, at, recurrence="weekly")
    post = await _publish(session, await upsert_scheduled_post(session, event))
    following = await schedule_next_occurrence(session, post)
    assert following is not None

    await upsert_scheduled_post(session, event.model_copy(update={"cancelled": True}))

    await session.refresh(following)
    assert following.status == PostStatus.CANCELLED
    assert _claimed(await claim_due_posts(session, following.scheduled_for), following) == []
    assert await schedule_next_occurrence(session, following) is None
