"""Real aiogram failures, produced by the Bot API double, mapped onto what the sender does next."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from dianabot_core.pipeline.errors import FailureKind as PipelineKind
from dianabot_core.pipeline.errors import classify
from dianabot_core.telegram.errors import (
    ApiFailureKind,
    OutcomeUnknown,
    TelegramPermanentError,
    TelegramRateLimited,
    TelegramTransientError,
    classify_failure,
    is_missing_join_request,
    is_not_member,
)
from dianabot_double import TelegramDouble

TOKEN = "123456:errors-test"
USER = 2001


@pytest.fixture(scope="module")
async def double() -> AsyncIterator[TelegramDouble]:
    double = TelegramDouble(global_limit=None, private_chat_limit=None, group_limit=None)
    await double.start("127.0.0.1", 0)
    yield double
    await double.stop()


@pytest.fixture
async def bot(double: TelegramDouble) -> AsyncIterator[Bot]:
    double.reset()
    assert double.base_url is not None
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(double.base_url), timeout=0.3))
    yield bot
    await bot.session.close()


async def _failure_of(bot: Bot, chat_id: int = USER) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any aiogram error is the subject
        await bot.send_message(chat_id, "hello")
    return caught.value


async def test_blocked_user_is_forbidden(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(blocked={USER})
    failure = classify_failure(await _failure_of(bot))
    assert (failure.kind, failure.delivered_maybe) == (ApiFailureKind.FORBIDDEN, False)
    assert "blocked" in failure.description


async def test_chat_not_found_is_a_bad_request(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(chat_not_found={USER})
    failure = classify_failure(await _failure_of(bot))
    assert failure.kind is ApiFailureKind.BAD_REQUEST
    assert "chat not found" in failure.description


async def test_429_carries_retry_after(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(storm={"count": 1, "retry_after": 7})
    failure = classify_failure(await _failure_of(bot))
    assert (failure.kind, failure.retry_after_s) == (ApiFailureKind.RETRY_AFTER, 7.0)


async def test_migration_names_the_new_chat(bot: Bot, double: TelegramDouble) -> None:
    double.set_faults(migrated={-4242: -1004242424242})
    failure = classify_failure(await _failure_of(bot, -4242))
    assert (failure.kind, failure.migrate_to_chat_id) == (ApiFailureKind.MIGRATED, -1004242424242)


@pytest.mark.parametrize("html", [True, False])
async def test_server_errors_including_nginx_html_are_not_delivered(
    bot: Bot, double: TelegramDouble, html: bool
) -> None:
    double.set_faults(server_errors={"count": 1, "status": 502, "html": html})
    failure = classify_failure(await _failure_of(bot))
    assert (failure.kind, failure.delivered_maybe) == (ApiFailureKind.SERVER, False)
    assert double.messages_for(USER) == []


async def test_a_timeout_is_unknown_because_the_message_may_have_gone_out(
    bot: Bot, double: TelegramDouble
) -> None:
    double.set_faults(slow={"delay": 1.0, "count": 1})
    failure = classify_failure(await _failure_of(bot))
    assert (failure.kind, failure.delivered_maybe) == (ApiFailureKind.UNKNOWN, True)
    assert len(double.messages_for(USER)) == 1  # it did go out


async def test_a_refused_connection_never_delivered() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(f"http://127.0.0.1:{port}")))
    try:
        failure = classify_failure(await _failure_of(bot))
    finally:
        await bot.session.close()
    assert (failure.kind, failure.delivered_maybe) == (ApiFailureKind.NETWORK, False)


def test_the_pipeline_retries_transient_ones_and_dead_letters_permanent_ones() -> None:
    assert classify(TelegramTransientError("502")) is PipelineKind.TRANSIENT
    assert classify(TelegramRateLimited("later", 40)) is PipelineKind.TRANSIENT
    assert classify(OutcomeUnknown("resend")) is PipelineKind.TRANSIENT
    assert classify(TelegramPermanentError("Bad Request: chat not found")) is PipelineKind.PERMANENT


def test_member_call_answers_that_mean_done() -> None:
    assert is_not_member("Bad Request: PARTICIPANT_ID_INVALID")
    assert is_not_member("Bad Request: user not found")
    assert not is_not_member("Bad Request: chat not found")
    assert is_missing_join_request("Bad Request: HIDE_REQUESTER_MISSING")
