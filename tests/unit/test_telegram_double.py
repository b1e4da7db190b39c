"""The Telegram Bot API double, driven by a real aiogram Bot exactly as the service drives Telegram.

A fake clock drives the double's limits, so "one second later" costs nothing; only the slow-answer
test sleeps for real (a fraction of a second).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BufferedInputFile,
    ChatFullInfo,
    ChatInviteLink,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
)

from dianabot_double import (
    GLOBAL_LIMIT,
    GROUP_LIMIT,
    PRIVATE_CHAT_LIMIT,
    RateLimit,
    TelegramDouble,
)

SECRET = "double-test-secret"
TOKEN = f"123456:{SECRET}"
USER, OTHER_USER = 1001, 1002
CHANNEL = -1001234567890
OLD_GROUP, NEW_SUPERGROUP = -4242, -1004242424242


class FakeClock:
    """Monotonic time the test moves by hand; wall time follows it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_760_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
async def double(clock: FakeClock) -> AsyncIterator[TelegramDouble]:
    double = TelegramDouble(token=TOKEN, clock=clock.monotonic, wall_clock=clock.time)
    await double.start("127.0.0.1", 0)
    yield double
    await double.stop()


@pytest.fixture(scope="module")
async def bot(double: TelegramDouble) -> AsyncIterator[Bot]:
    assert double.base_url is not None
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(double.base_url)))
    yield bot
    await bot.session.close()


@pytest.fixture(autouse=True)
def _fresh(double: TelegramDouble, clock: FakeClock) -> None:
    double.reset()
    clock.now = 1000.0  # safe: the reset forgot every time the double saw; round numbers stay exact


async def _control(double: TelegramDouble, verb: str, path: str, body: object = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(verb, f"{double.base_url}/_double/{path}", json=body) as response,
    ):
        return await response.json()


async def test_send_message_returns_increasing_ids_per_chat_and_is_recorded(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    first = await bot.send_message(USER, "hello")
    second_chat = await bot.send_message(OTHER_USER, "hi there")
    clock.advance(1.0)
    second = await bot.send_message(USER, "again")

    assert isinstance(first, Message)
    assert (first.message_id, second.message_id, second_chat.message_id) == (1, 2, 1)
    assert first.chat.id == USER
    assert first.chat.type == "private"
    assert first.text == "hello"
    assert first.from_user is not None
    assert first.from_user.id == 123456
    assert [m.text for m in double.messages_for(USER)] == ["hello", "again"]
    request = double.requests_for("sendMessage", USER)[0]
    # aiogram posts a urlencoded form of strings; the double turns chat_id back into an int.
    assert (request.encoding, request.params, request.status, request.outcome) == (
        "urlencoded",
        {"chat_id": USER, "text": "hello"},
        200,
        "ok",
    )
    dumped = json.dumps([r.to_json() for r in double.requests]) + json.dumps(double.stats())
    assert SECRET not in dumped


async def test_second_private_message_within_a_second_gets_429_and_counts_a_violation(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    await bot.send_message(USER, "one")
    clock.advance(0.4)
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(USER, "two")
    assert refused.value.retry_after == 1  # the window frees in 0.6 s: ceil, at least 1
    assert double.violations == {"global": 0, "chat": 1, "group": 0}
    assert double.stats()["retry_after_ignored"] == 0
    assert [m.text for m in double.messages_for(USER)] == ["one"]  # a 429 is not delivered

    clock.advance(0.7)  # the window is free again, but the announced second is not over
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(USER, "too early")
    assert double.stats()["retry_after_ignored"] == 1

    clock.advance(1.0)
    await bot.send_message(USER, "after waiting")
    stats = double.stats()
    assert stats["violations_total"] == 2
    assert stats["by_method"]["sendMessage"] == {"ok": 2, "rate_limited": 2}
    assert stats["max_private_chat_rate_1s"] == 1


async def test_a_sender_that_paces_itself_has_no_violations(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    for n in range(3):
        await bot.send_message(USER, f"paced {n}")
        clock.advance(1.0)  # exactly the limit: an event leaves the window at t + 1 s
    stats = double.stats()
    assert stats["violations_total"] == 0
    assert stats["retry_after_ignored"] == 0
    assert stats["per_chat"][str(USER)] == {"sends": 3, "max_rate_1s": 1, "max_rate_60s": 3}


async def test_31st_message_within_a_second_hits_the_global_limit(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    for chat in range(1, 31):
        await bot.send_message(chat, "broadcast")
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(31, "broadcast")
    assert refused.value.retry_after == 1
    assert double.violations == {"global": 1, "chat": 0, "group": 0}
    assert double.stats()["max_global_rate_1s"] == 30

    clock.advance(1.0)
    await bot.send_message(31, "broadcast")
    assert len(double.messages) == 31


async def test_group_allows_20_messages_a_minute(bot: Bot, double: TelegramDouble, clock: FakeClock) -> None:
    for _ in range(20):
        await bot.send_message(CHANNEL, "post")
        clock.advance(1.0)
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(CHANNEL, "post 21")
    assert refused.value.retry_after == 40  # the first post, at t=0, leaves the window at t=60
    assert double.violations == {"global": 0, "chat": 0, "group": 1}

    clock.advance(40.0)
    message = await bot.send_message(CHANNEL, "post 21")
    assert message.chat.type == "channel"
    assert message.sender_chat is not None  # channel posts are signed by the channel, not the bot
    assert double.stats()["max_group_chat_rate_60s"] == 20


async def test_limits_can_be_changed_and_disabled(bot: Bot, double: TelegramDouble) -> None:
    try:
        double.configure(global_limit=None, private_chat_limit=RateLimit(2, 1.0), group_limit=None)
        for _ in range(25):
            await bot.send_message(CHANNEL, "no group limit")  # nor a global one
        await bot.send_message(USER, "a")
        await bot.send_message(USER, "b")
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(USER, "c")
        assert double.violations == {"global": 0, "chat": 1, "group": 0}
    finally:
        double.configure(
            global_limit=GLOBAL_LIMIT, private_chat_limit=PRIVATE_CHAT_LIMIT, group_limit=GROUP_LIMIT
        )


async def test_blocked_user_is_forbidden(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(blocked=[USER])
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(USER, "are you there?")
    assert double.messages == []
    assert double.requests[-1].outcome == "blocked"
    assert double.requests[-1].status == 403


async def test_unknown_chat_is_a_bad_request(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(chat_not_found=[USER])
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(USER, "hello?")


async def test_migrated_group_names_the_supergroup(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(migrated={OLD_GROUP: NEW_SUPERGROUP})
    with pytest.raises(TelegramMigrateToChat) as moved:
        await bot.send_message(OLD_GROUP, "hello group")
    assert moved.value.migrate_to_chat_id == NEW_SUPERGROUP
    await bot.send_message(NEW_SUPERGROUP, "hello supergroup")


async def test_5xx_burst_then_recovery(bot: Bot, double: TelegramDouble, clock: FakeClock) -> None:
    double.set_faults(server_errors={"count": 2, "status": 502})
    for _ in range(2):
        with pytest.raises(TelegramServerError, match="Bad Gateway"):
            await bot.send_message(USER, "x")
    await bot.send_message(USER, "through")
    assert [r.status for r in double.requests] == [502, 502, 200]

    # Telegram's front end answers a 502 with nginx's HTML page: aiogram cannot even decode it.
    clock.advance(1.0)
    double.set_faults(server_errors={"count": 1, "html": True})
    with pytest.raises(ClientDecodeError):
        await bot.send_message(USER, "x")


async def test_forced_429_storm_counts_early_retries_but_no_violations(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    double.set_faults(storm={"count": 2, "retry_after": 3})
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(USER, "x")
    assert refused.value.retry_after == 3
    clock.advance(1.0)
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(OTHER_USER, "x")  # the storm's wait covers the whole bot
    clock.advance(3.0)
    await bot.send_message(USER, "x")
    stats = double.stats()
    assert (stats["violations_total"], stats["retry_after_ignored"]) == (0, 1)
    assert stats["by_outcome"] == {"storm": 2, "ok": 1}


async def test_slow_answer_is_late_but_the_message_was_delivered(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(slow={"delay": 0.3, "count": 1})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bot.send_message(USER, "slow"), 0.1)
    # The caller saw a timeout, yet the message went out: why sends are at-least-once at best.
    assert [m.text for m in double.messages_for(USER)] == ["slow"]
    assert double.faults.slow is None


async def test_membership_methods_parse_into_aiogram_types(bot: Bot, double: TelegramDouble) -> None:
    link = await bot.create_chat_invite_link(CHANNEL, member_limit=1, expire_date=1_760_003_600)
    assert isinstance(link, ChatInviteLink)
    assert link.invite_link.startswith("https://t.me/+")
    assert (link.member_limit, link.creates_join_request, link.is_revoked, link.creator.id) == (
        1,
        False,
        False,
        123456,
    )
    assert link.expire_date is not None
    assert int(link.expire_date.timestamp()) == 1_760_003_600
    revoked = await bot.revoke_chat_invite_link(CHANNEL, link.invite_link)
    assert revoked.is_revoked

    assert isinstance(await bot.get_chat_member(CHANNEL, USER), ChatMemberMember)
    assert await bot.ban_chat_member(CHANNEL, USER) is True
    banned = await bot.get_chat_member(CHANNEL, USER)
    assert isinstance(banned, ChatMemberBanned)
    assert await bot.unban_chat_member(CHANNEL, USER, only_if_banned=True) is True
    assert isinstance(await bot.get_chat_member(CHANNEL, USER), ChatMemberLeft)
    assert await bot.approve_chat_join_request(CHANNEL, USER) is True
    assert isinstance(await bot.get_chat_member(CHANNEL, USER), ChatMemberMember)
    # Telegram's documented trap: unban without only_if_banned removes a current member.
    await bot.unban_chat_member(CHANNEL, USER)
    assert isinstance(await bot.get_chat_member(CHANNEL, USER), ChatMemberLeft)

    chat = await bot.get_chat(CHANNEL)
    assert isinstance(chat, ChatFullInfo)
    assert chat.type == "channel"


async def test_not_members_and_missing_join_requests_fail_as_telegram_does(
    bot: Bot, double: TelegramDouble
) -> None:
    double.set_faults(not_members=[USER], no_join_request=[OTHER_USER])
    with pytest.raises(TelegramBadRequest, match="user not found"):
        await bot.get_chat_member(CHANNEL, USER)
    with pytest.raises(TelegramBadRequest, match="PARTICIPANT_ID_INVALID"):
        await bot.ban_chat_member(CHANNEL, USER)
    with pytest.raises(TelegramBadRequest, match="HIDE_REQUESTER_MISSING"):
        await bot.approve_chat_join_request(CHANNEL, OTHER_USER)


async def test_send_photo_by_url_and_by_upload_with_an_inline_keyboard(
    bot: Bot, double: TelegramDouble, clock: FakeClock
) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Renew", callback_data="renew:vip")]]
    )
    by_url = await bot.send_photo(
        USER, "https://example.org/vip.jpg", caption="Your VIP ends soon", reply_markup=keyboard
    )
    assert by_url.photo
    assert by_url.caption == "Your VIP ends soon"
    assert isinstance(by_url.reply_markup, InlineKeyboardMarkup)
    assert by_url.reply_markup.inline_keyboard[0][0].callback_data == "renew:vip"
    record = double.messages_for(USER)[0]
    assert (record.media_type, record.media, record.caption) == (
        "photo",
        "https://example.org/vip.jpg",
        "Your VIP ends soon",
    )
    assert record.reply_markup == {"inline_keyboard": [[{"text": "Renew", "callback_data": "renew:vip"}]]}
    assert double.requests[-1].encoding == "urlencoded"  # a URL is just a string field

    clock.advance(1.0)
    uploaded = await bot.send_photo(USER, BufferedInputFile(b"\xff\xd8jpeg", "promo.jpg"))
    assert uploaded.message_id == 2
    request = double.requests[-1]
    assert request.encoding == "multipart"  # only a file makes aiogram switch to multipart
    assert [(u.filename, u.size) for u in request.files.values()] == [("promo.jpg", 6)]


async def test_media_group_copy_and_delete(bot: Bot, double: TelegramDouble) -> None:
    album = await bot.send_media_group(
        CHANNEL,
        [InputMediaPhoto(media="https://example.org/1.jpg", caption="album"), InputMediaPhoto(media="x")],
    )
    assert [m.message_id for m in album] == [1, 2]
    assert album[0].media_group_id == album[1].media_group_id
    copied = await bot.copy_message(USER, CHANNEL, album[0].message_id)
    assert copied.message_id == 1
    assert double.messages_for(USER)[0].caption == "album"
    assert await bot.delete_message(CHANNEL, 2) is True
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(CHANNEL, 2)


async def test_wrong_token_is_unauthorized_and_never_recorded(double: TelegramDouble) -> None:
    assert double.base_url is not None
    intruder = Bot(
        "123456:wrong-secret", session=AiohttpSession(api=TelegramAPIServer.from_base(double.base_url))
    )
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await intruder.send_message(USER, "x")
    finally:
        await intruder.session.close()
    assert double.requests[-1].outcome == "unauthorized"
    assert "wrong-secret" not in json.dumps([r.to_json() for r in double.requests])


async def test_unknown_method_and_json_bodies(double: TelegramDouble) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{double.base_url}/bot{TOKEN}/sendTelepathy", json={}) as response:
            assert response.status == 404
            assert await response.json() == {
                "ok": False,
                "error_code": 404,
                "description": "Not Found: method not found",
            }
        body = {"chat_id": USER, "text": "from JSON", "reply_markup": {"inline_keyboard": []}}
        async with http.post(f"{double.base_url}/bot{TOKEN}/sendmessage", json=body) as response:
            answer = await response.json()
    assert answer["ok"] is True
    assert answer["result"]["text"] == "from JSON"
    assert double.requests[-1].method == "sendMessage"  # method names are case-insensitive
    assert double.requests[-1].encoding == "json"


async def test_control_api_flips_faults_and_reports(bot: Bot, double: TelegramDouble) -> None:
    faults = await _control(double, "POST", "faults", {"blocked": [USER], "storm": None})
    assert faults["blocked"] == [USER]
    with pytest.raises(TelegramForbiddenError):
        await bot.send_message(USER, "x")
    await _control(double, "POST", "faults", {"clear": True})
    await bot.send_message(USER, "x")

    bad = await _control(double, "POST", "faults", {"blockd": [1]})
    assert bad["ok"] is False
    assert (await _control(double, "GET", "health"))["ok"] is True
    stats = await _control(double, "GET", "stats")
    assert stats["by_method"]["sendMessage"] == {"blocked": 1, "ok": 1}
    messages = await _control(double, "GET", f"messages?chat_id={USER}")
    assert [m["text"] for m in messages["messages"]] == ["x"]
    requests = await _control(double, "GET", "requests?method=sendMessage")
    assert [r["status"] for r in requests["requests"]] == [403, 200]
    config = await _control(double, "POST", "config", {"group_limit": None})
    assert config["group"] is None
    assert config["global"] == {"count": 30, "window_s": 1.0}
    await _control(double, "POST", "config", {"group_limit": {"count": 20, "window_s": 60}})
    await _control(double, "POST", "reset")
    assert double.requests_for("sendMessage") == []
