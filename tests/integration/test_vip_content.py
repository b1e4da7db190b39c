"""Channel posts end to end: ``post.scheduled`` and publishing ticks in over real Kafka, posts in
PostgreSQL, messages in the Bot API double."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.content import content_of
from dianabot_contracts.events import Button, Media, MessageContent, PostScheduled
from dianabot_core.models import ChannelPost, PostStatus
from dianabot_core.telegram.sender import SendRequest
from tests.integration.test_telegram_support import wait_for
from tests.integration.test_vip_support import DAY, PUBLISHING, Vip, era, settle, vip_stack


@pytest.fixture(scope="module")
async def vip(
    kafka: object, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Vip]:
    async with vip_stack(admin, session_factory) as stack:
        yield stack


@pytest.fixture(autouse=True)
async def _fresh(vip: Vip) -> AsyncIterator[None]:
    vip.double.set_faults(clear=True)
    yield
    await vip.clean_up()


async def schedule(vip: Vip, chat_id: int, at: datetime, **changes: Any) -> PostScheduled:
    """Publish a ``post.scheduled`` and wait until the post is recorded."""
    values: dict[str, Any] = {
        "post_id": f"post-{chat_id}-{at.timestamp():.0f}",
        "channel_chat_id": chat_id,
        "post_type": "narrative",
        "content": MessageContent(text=f"Capítulo para {chat_id}"),
        "scheduled_for": at,
    }
    event = PostScheduled(**(values | changes))
    envelope = await vip.publish(event, vip.topics.content)
    await vip.wait_handled(vip.handler_name("record_scheduled_post", "c"), envelope.event_id)
    return event


async def post(vip: Vip, post_id: str) -> ChannelPost:
    async with vip.sessions() as session:
        found = await session.scalar(select(ChannelPost).where(ChannelPost.external_id == post_id))
    assert found is not None
    return found


async def publish_until(vip: Vip, slot: datetime, done: Any, ticks: int = 10) -> int:
    """Tick the publishing job (both publishers) until ``done()``; returns the ticks it took."""
    for count in range(1, ticks + 1):
        await vip.run_job(PUBLISHING, slot)
        if await done():
            return count
    raise AssertionError(f"not done after {ticks} publishing ticks")


async def test_due_posts_are_published_once_even_when_the_job_runs_twice_at_once(vip: Vip) -> None:
    now = era()
    chats = [await vip.new_channel() for _ in range(5)]
    photo = MessageContent(
        text="Nuevo capítulo",
        media=(Media(kind="photo", file="https://example.com/capitulo.jpg"),),
        buttons=((Button(text="Leer", url="https://example.com/leer"),),),
        protect_content=True,
    )
    posts = [
        await schedule(vip, chats[0], now - DAY / 24, content=photo),
        await schedule(vip, chats[1], now),
        await schedule(vip, chats[2], now - DAY),
        await schedule(vip, chats[3], now - DAY / 2),
    ]
    later = await schedule(vip, chats[4], now + DAY / 24 / 60)  # one minute after the slot

    # Two ticks for the same slot, and one for a rival publisher (another consumer group): three
    # runs at once compete for the posts (each claims three at most, so two runs are needed).
    await vip.tick(PUBLISHING, now)
    await vip.tick(PUBLISHING, now, rival=True)
    await vip.tick(PUBLISHING, now)
    await wait_for(lambda: all(vip.double.messages_for(c) for c in chats[:4]), within=60)
    await vip.run_job(PUBLISHING, now)
    await settle()

    for event, chat in zip(posts, chats, strict=False):
        [message] = vip.double.messages_for(chat)
        stored = await post(vip, event.post_id)
        assert stored.status is PostStatus.PUBLISHED
        assert stored.telegram_message_id == message.message_id
        assert stored.published_at is not None
    [with_photo] = vip.double.messages_for(chats[0])
    assert (with_photo.method, with_photo.caption) == ("sendPhoto", "Nuevo capítulo")
    assert with_photo.reply_markup == {
        "inline_keyboard": [[{"text": "Leer", "url": "https://example.com/leer"}]]
    }
    [photo_request] = vip.double.requests_for("sendPhoto", chat_id=chats[0])
    assert photo_request.params["protect_content"] in (True, "true")
    published = await vip.outbox("post.published", vip.topics.content)
    mine = {p["post_id"]: p for p in published if p["channel_chat_id"] in chats}
    assert set(mine) == {p.post_id for p in posts}
    assert vip.double.messages_for(chats[4]) == []
    assert (await post(vip, later.post_id)).status is PostStatus.SCHEDULED


async def test_a_post_sent_by_a_run_that_then_failed_is_not_sent_again(vip: Vip) -> None:
    # The send is in the ledger as sent, but the run rolled back: the post is still scheduled.
    now = era()
    chat = await vip.new_channel()
    event = await schedule(vip, chat, now)
    stored = await post(vip, event.post_id)
    await vip.sender.send(SendRequest(key=f"post:{stored.id}", chat_id=chat, content=content_of(stored)))
    assert len(vip.double.messages_for(chat)) == 1

    await vip.run_job(PUBLISHING, now)
    await settle()

    [message] = vip.double.messages_for(chat)
    after = await post(vip, event.post_id)
    assert (after.status, after.telegram_message_id) == (PostStatus.PUBLISHED, message.message_id)


async def test_a_recurring_post_gets_its_next_occurrence_and_a_cancelled_one_is_never_sent(vip: Vip) -> None:
    now = era()
    daily_chat, cancelled_chat = await vip.new_channel(), await vip.new_channel()
    daily = await schedule(vip, daily_chat, now, recurrence="daily")
    cancelled = await schedule(vip, cancelled_chat, now)
    await schedule(vip, cancelled_chat, now, post_id=cancelled.post_id, cancelled=True)

    await vip.run_job(PUBLISHING, now)
    await wait_for(lambda: vip.double.messages_for(daily_chat))
    nxt = await post(vip, f"{daily.post_id}@{(now + DAY).isoformat()}")
    assert (nxt.status, nxt.scheduled_for, nxt.recurrence) == (
        PostStatus.SCHEDULED,
        now + DAY,
        daily.recurrence,
    )

    # The next day's run publishes the occurrence and schedules the one after it.
    await vip.run_job(PUBLISHING, now + DAY)
    await wait_for(lambda: len(vip.double.messages_for(daily_chat)) == 2)
    await settle()
    assert (await post(vip, nxt.external_id or "")).status is PostStatus.PUBLISHED
    await post(vip, f"{daily.post_id}@{(now + 2 * DAY).isoformat()}")
    assert vip.double.messages_for(cancelled_chat) == []
    assert (await post(vip, cancelled.post_id)).status is PostStatus.CANCELLED
    assert vip.double.requests_for(chat_id=cancelled_chat) == []


async def test_a_post_telegram_refuses_fails_with_post_failed_and_an_alert(vip: Vip) -> None:
    now = era()
    missing = await vip.new_channel()
    event = await schedule(vip, missing, now)
    vip.double.set_faults(chat_not_found=[missing])

    counts = await vip.run_job(PUBLISHING, now)

    assert counts["failed"] >= 1
    assert (await post(vip, event.post_id)).status is PostStatus.FAILED
    assert vip.double.messages_for(missing) == []
    [failed] = [
        p for p in await vip.outbox("post.failed", vip.topics.content) if p["post_id"] == event.post_id
    ]
    assert "chat not found" in failed["reason"]
    [alert] = [
        a
        for a in await vip.outbox("alert.raised", vip.topics.alerts)
        if a["alert_key"] == f"post.failed:{event.post_id}"
    ]
    assert alert["details"]["channel_chat_id"] == missing


async def test_a_transient_failure_is_retried_by_the_next_run_and_fails_after_the_give_up_time(
    vip: Vip,
) -> None:
    now = era()
    flaky, down = await vip.new_channel(), await vip.new_channel()
    retried = await schedule(vip, flaky, now)
    vip.double.set_faults(server_errors={"count": 1, "status": 502, "methods": ["sendMessage"]})

    ticks = await publish_until(vip, now, lambda: _status_is(vip, retried.post_id, PostStatus.PUBLISHED))

    assert ticks == 2  # the first run met the 502 and left the post for the next one
    assert len(vip.double.messages_for(flaky)) == 1
    assert [r.status for r in vip.double.requests_for("sendMessage", chat_id=flaky)] == [502, 200]

    # Telegram keeps failing for a post 30 minutes late: it fails, with the alert.
    given_up = await schedule(vip, down, now)
    vip.double.set_faults(server_errors={"count": 100, "status": 502, "methods": ["sendMessage"]})
    counts = await vip.run_job(PUBLISHING, now + 29 * DAY / 24 / 60)
    assert counts["retrying"] >= 1
    assert (await post(vip, given_up.post_id)).status is PostStatus.SCHEDULED
    await publish_until(vip, now + DAY / 48, lambda: _status_is(vip, given_up.post_id, PostStatus.FAILED))
    vip.double.set_faults(clear=True)
    assert vip.double.messages_for(down) == []
    alerts = await vip.outbox("alert.raised", vip.topics.alerts)
    assert any(a["alert_key"] == f"post.failed:{given_up.post_id}" for a in alerts)


async def _status_is(vip: Vip, post_id: str, status: PostStatus) -> bool:
    return (await post(vip, post_id)).status is status
