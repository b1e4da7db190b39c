"""The sender against the Bot API double and the real PostgreSQL: ledger, limits, errors, member calls."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.events import Button, Media, MessageContent, Priority
from dianabot_core.models import Channel, ChannelKind, User
from dianabot_core.telegram.errors import (
    OutcomeUnknown,
    SendInFlight,
    TelegramPermanentError,
    TelegramTransientError,
)
from dianabot_core.telegram.models import SendStatus, TelegramChatMigration
from dianabot_core.telegram.sender import SendOutcome, SendRequest, TelegramSender
from dianabot_double import GLOBAL_LIMIT, GROUP_LIMIT, PRIVATE_CHAT_LIMIT, TelegramDouble
from tests.integration.test_telegram_support import (
    create_users,
    fresh_chat_ids,
    ledger_rows,
    sender_for,
    telegram_double,
)

RENEW = ((Button(text="Renew", url="https://example.org/renew"),),)


@pytest.fixture(scope="module")
async def double() -> AsyncIterator[TelegramDouble]:
    async with telegram_double() as double:
        yield double


@pytest.fixture
async def sender(
    double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[TelegramSender]:
    double.reset()
    double.configure(
        global_limit=GLOBAL_LIMIT, private_chat_limit=PRIVATE_CHAT_LIMIT, group_limit=GROUP_LIMIT
    )
    async with sender_for(double, request_timeout_s=1.0, group_interval_s=3.0) as sender:
        yield sender


def _key() -> str:
    return f"test:{time.monotonic_ns()}"


def text(value: str = "hola") -> MessageContent:
    return MessageContent(text=value)


async def test_text_photo_and_album_with_buttons_reach_their_chats(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    a, b, c = fresh_chat_ids(3)
    photo = Media(kind="photo", file="https://example.org/a.jpg")
    video = Media(kind="video", file="https://example.org/b.mp4")
    requests = [
        SendRequest(_key(), a, MessageContent(text="hi", buttons=RENEW, protect_content=True)),
        SendRequest(_key(), b, MessageContent(text="look", media=(photo,), buttons=RENEW)),
        SendRequest(_key(), c, MessageContent(text="album", media=(photo, video), buttons=RENEW)),
    ]
    results = await asyncio.gather(*(sender.send(r) for r in requests))
    assert [r.outcome for r in results] == [SendOutcome.SENT] * 3

    [message] = double.messages_for(a)
    assert message.text == "hi"
    assert message.reply_markup == {
        "inline_keyboard": [[{"text": "Renew", "url": "https://example.org/renew"}]]
    }
    assert double.requests_for("sendMessage", a)[0].params["protect_content"] is True
    [with_photo] = double.messages_for(b)
    assert (with_photo.media_type, with_photo.caption) == ("photo", "look")
    assert with_photo.reply_markup is not None
    album = double.messages_for(c)
    assert [m.media_type for m in album] == ["photo", "video", None]
    assert album[2].text == "album"
    assert album[2].reply_markup is not None

    rows = await ledger_rows(session_factory, [r.key for r in requests] + [f"{requests[2].key}#1"])
    assert {row.status for row in rows.values()} == {SendStatus.SENT}
    assert rows[requests[0].key].telegram_message_id == message.message_id
    assert rows[f"{requests[2].key}#1"].method == "sendMessage"


async def test_a_send_recorded_as_sent_is_never_sent_again(
    sender: TelegramSender, double: TelegramDouble
) -> None:
    [chat] = fresh_chat_ids(1)
    request = SendRequest(_key(), chat, text())
    first = await sender.send(request)
    again = await sender.send(request)
    assert (first.outcome, again.outcome) == (SendOutcome.SENT, SendOutcome.ALREADY_SENT)
    assert again.message_ids == first.message_ids
    assert len(double.requests_for("sendMessage", chat)) == 1


async def test_403_marks_the_user_blocked_and_is_final(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    [user] = await create_users(session_factory, 1)
    double.set_faults(blocked={user.chat_id})
    request = SendRequest(_key(), user.chat_id, text(), user_id=user.id)
    assert (await sender.send(request)).outcome is SendOutcome.BLOCKED
    assert (await sender.send(request)).outcome is SendOutcome.BLOCKED  # from the ledger: no second call
    assert len(double.requests_for("sendMessage", user.chat_id)) == 1
    async with session_factory() as session:
        blocked_at = await session.scalar(select(User.bot_blocked_at).where(User.id == user.id))
    assert blocked_at is not None
    assert (await ledger_rows(session_factory, [request.key]))[request.key].status is SendStatus.BLOCKED


async def test_chat_not_found_is_permanent_with_the_reason_recorded(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    [chat] = fresh_chat_ids(1)
    double.set_faults(chat_not_found={chat})
    request = SendRequest(_key(), chat, text())
    with pytest.raises(TelegramPermanentError, match="chat not found"):
        await sender.send(request)
    row = (await ledger_rows(session_factory, [request.key]))[request.key]
    assert (row.status, row.error) == (SendStatus.FAILED, "Bad Request: chat not found")


async def test_an_nginx_502_is_transient_and_the_retry_delivers_once(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    [chat] = fresh_chat_ids(1)
    double.set_faults(server_errors={"count": 1, "status": 502, "html": True})
    request = SendRequest(_key(), chat, text())
    with pytest.raises(TelegramTransientError):
        await sender.send(request)
    assert (await ledger_rows(session_factory, [request.key]))[request.key].status is SendStatus.RETRY
    assert (await sender.send(request)).outcome is SendOutcome.SENT
    assert len(double.messages_for(chat)) == 1


async def test_a_migrated_group_is_recorded_and_the_message_resent_there(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    old = -fresh_chat_ids(1)[0]  # a basic group
    new = -1_000_000_000_000 - fresh_chat_ids(1)[0]  # its supergroup
    async with session_factory() as session, session.begin():
        await session.execute(insert(Channel).values(telegram_chat_id=old, kind=ChannelKind.FREE))
    double.set_faults(migrated={old: new})
    result = await sender.send(SendRequest(_key(), old, text("post")))
    assert (result.outcome, result.chat_id) == (SendOutcome.SENT, new)
    assert [m.text for m in double.messages_for(new)] == ["post"]
    async with session_factory() as session:
        recorded = await session.scalar(
            select(TelegramChatMigration.new_chat_id).where(TelegramChatMigration.old_chat_id == old)
        )
        channel = await session.scalar(
            select(Channel.telegram_chat_id).where(Channel.telegram_chat_id == new)
        )
    assert (recorded, channel) == (new, new)
    # Later sends to the old id go straight to the supergroup.
    later = await sender.send(SendRequest(_key(), old, text("next")))
    assert later.chat_id == new
    assert len(double.requests_for("sendMessage", old)) == 1


async def test_a_timeout_is_unknown_and_resent_only_when_the_notification_asks(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    careful, eager = fresh_chat_ids(2)
    double.set_faults(slow={"delay": 1.5, "count": 2, "methods": ["sendMessage"]})
    once = SendRequest(_key(), careful, text("at most once"))
    twice = SendRequest(_key(), eager, text("at least once"), resend_if_unknown=True)
    assert (await sender.send(once)).outcome is SendOutcome.UNKNOWN
    with pytest.raises(OutcomeUnknown):
        await sender.send(twice)
    rows = await ledger_rows(session_factory, [once.key, twice.key])
    assert {r.status for r in rows.values()} == {SendStatus.UNKNOWN}

    # Redelivered: the careful one is not resent, the eager one is, and duplicates its message.
    assert (await sender.send(once)).outcome is SendOutcome.UNKNOWN
    assert (await sender.send(twice)).outcome is SendOutcome.SENT
    assert len(double.messages_for(careful)) == 1
    assert len(double.messages_for(eager)) == 2


async def test_a_send_in_flight_elsewhere_is_not_started_twice(
    sender: TelegramSender, double: TelegramDouble
) -> None:
    [chat] = fresh_chat_ids(1)
    double.set_faults(slow={"delay": 0.6, "count": 1, "methods": ["sendMessage"]})
    request = SendRequest(_key(), chat, text())
    first = asyncio.create_task(sender.send(request))
    await asyncio.sleep(0.3)
    with pytest.raises(SendInFlight):
        await sender.send(request)
    assert (await first).outcome is SendOutcome.SENT
    assert len(double.messages_for(chat)) == 1


async def test_a_429_storm_pauses_the_bot_and_loses_nothing(
    sender: TelegramSender, double: TelegramDouble
) -> None:
    chats = fresh_chat_ids(12)
    double.set_faults(storm={"count": 3, "retry_after": 1})
    started = time.monotonic()
    results = await asyncio.gather(*(sender.send(SendRequest(_key(), c, text())) for c in chats))
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    assert all(len(double.messages_for(c)) == 1 for c in chats)
    stats = double.stats()
    assert stats["by_outcome"]["storm"] == 3
    assert (stats["violations_total"], stats["retry_after_ignored"]) == (0, 0)
    assert time.monotonic() - started >= 1.0  # the announced wait was kept


async def test_two_senders_together_keep_every_limit(
    double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """Two senders with their own pools and locks (as two processes have) share the limits."""
    double.reset()
    double.configure(
        global_limit=GLOBAL_LIMIT, private_chat_limit=PRIVATE_CHAT_LIMIT, group_limit=GROUP_LIMIT
    )
    singles = fresh_chat_ids(60)
    repeated = fresh_chat_ids(4)
    group = -fresh_chat_ids(1)[0]
    requests = [SendRequest(_key(), c, text()) for c in singles]
    requests += [SendRequest(_key(), c, text(str(i))) for c in repeated for i in range(3)]
    requests += [SendRequest(_key(), group, text(str(i)), priority=Priority.CRITICAL) for i in range(3)]
    async with (
        sender_for(double, group_interval_s=3.0) as one,
        sender_for(double, group_interval_s=3.0) as two,
    ):
        results = await asyncio.gather(*((one, two)[i % 2].send(r) for i, r in enumerate(requests)))
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    stats = double.stats()
    assert stats["delivered"] == len(requests)
    assert stats["violations_total"] == 0, stats["violations"]
    assert stats["retry_after_ignored"] == 0
    assert stats["max_global_rate_1s"] <= GLOBAL_LIMIT.count
    assert stats["max_private_chat_rate_1s"] == 1
    for chat in repeated:
        times = [m.monotonic for m in double.messages_for(chat)]
        assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0


async def test_a_slow_intent_commit_keeps_every_slot_and_every_limit(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A loaded machine makes the intent's durable commit slow (here 150 ms, over `late_slot_s`).

    Counted inside the slot it made every slot late: each was given up, cost a global slot and
    was taken again (a chaos run saw sends attempted 107 times and the bot sending ~4/s). The
    intent is now taken in the slot's lead and kept if the slot is lost anyway, so each message
    is attempted once.
    """
    start_attempt = sender.ledger.start_attempt

    async def slow_start_attempt(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.15)
        return await start_attempt(*args, **kwargs)

    sender.ledger.start_attempt = slow_start_attempt  # type: ignore[method-assign]
    requests = [SendRequest(_key(), c, text()) for c in fresh_chat_ids(40)]
    results = await asyncio.gather(*(sender.send(r) for r in requests))
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    rows = await ledger_rows(session_factory, [r.key for r in requests])
    assert sorted(row.attempts for row in rows.values()) == [1] * len(requests)
    stats = double.stats()
    assert stats["delivered"] == len(requests)
    assert stats["violations_total"] == 0, stats["violations"]


async def test_slow_database_reads_after_a_lost_slot_do_not_stop_sending(
    sender: TelegramSender, double: TelegramDouble, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A loaded database: the intent's commit and every read of the 429 pauses take 150 ms.

    The first slot of each send is lost to the intent's commit (taken after the slot). The next
    one used to read the pauses after the slot as well, so it was late too, and the next, and so
    on: in `make chaos` a busy process sent a message or two a second and its notification lanes
    made no progress for minutes. A kept intent now needs no round trip between slot and call.
    """
    start_attempt, paused_for = sender.ledger.start_attempt, sender.gate.paused_for

    async def slow_start_attempt(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.15)
        return await start_attempt(*args, **kwargs)

    async def slow_paused_for(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.15)
        return await paused_for(*args, **kwargs)

    sender.ledger.start_attempt = slow_start_attempt  # type: ignore[method-assign]
    sender.gate.paused_for = slow_paused_for  # type: ignore[method-assign]
    late_before = _late_slots()
    requests = [SendRequest(_key(), c, text()) for c in fresh_chat_ids(30)]
    results = await asyncio.gather(*(sender.send(r) for r in requests), return_exceptions=True)
    assert [getattr(r, "outcome", r) for r in results] == [SendOutcome.SENT] * len(requests)
    # The first slot of each send is lost to its intent's commit, and at most one more while the
    # process learns how long its pause reads take (the lead it takes for them).
    assert _late_slots() - late_before <= 2 * len(requests)
    stats = double.stats()
    assert stats["delivered"] == len(requests)
    assert stats["violations_total"] == 0, stats["violations"]


def _late_slots() -> float:
    return REGISTRY.get_sample_value("dianabot_telegram_late_slots_total") or 0.0


async def test_critical_sends_overtake_a_bulk_backlog(sender: TelegramSender, double: TelegramDouble) -> None:
    bulk_chats = fresh_chat_ids(75)  # 3 s of sending at 25/s, all asking for slots at once
    critical_chats = fresh_chat_ids(5)
    bulk = [asyncio.create_task(sender.send(SendRequest(_key(), c, text("bulk")))) for c in bulk_chats]
    await asyncio.sleep(0.5)
    await asyncio.gather(
        *(
            sender.send(SendRequest(_key(), c, text("critical"), priority=Priority.CRITICAL))
            for c in critical_chats
        )
    )
    await asyncio.gather(*bulk)
    arrived = {m.chat_id: m.monotonic for m in double.messages}
    last_critical = max(arrived[c] for c in critical_chats)
    # Queued first-come first-served, the critical sends would arrive after the whole backlog.
    assert sum(arrived[c] > last_critical for c in bulk_chats) >= 20
    assert double.stats()["violations_total"] == 0


async def test_member_calls(sender: TelegramSender, double: TelegramDouble) -> None:
    channel = -1_000_000_000_000 - fresh_chat_ids(1)[0]
    member, stranger = fresh_chat_ids(2)
    double.set_faults(not_members={stranger}, no_join_request={stranger})

    assert await sender.ban_chat_member(channel, member) is True
    assert (await sender.get_chat_member(channel, member)).status == "kicked"  # type: ignore[union-attr]
    assert await sender.unban_chat_member(channel, member) is True
    assert (await sender.get_chat_member(channel, member)).status == "left"  # type: ignore[union-attr]
    assert await sender.ban_chat_member(channel, stranger) is False  # "not a member" counts as done
    assert await sender.get_chat_member(channel, stranger) is None

    link = await sender.create_invite_link(channel, expires_in=timedelta(hours=1), name="vip")
    [created] = double.requests_for("createChatInviteLink", channel)
    assert created.params["member_limit"] == 1
    assert created.params["expire_date"] == int(link.expires_at.timestamp())
    assert link.url.startswith("https://t.me/+")

    assert await sender.approve_join_request(channel, member) is True
    assert (await sender.get_chat_member(channel, member)).status == "member"  # type: ignore[union-attr]
    assert await sender.approve_join_request(channel, stranger) is False
