"""The send ledger's record of a send when the send is cancelled (a handler's time limit, shutdown)
at each step, and when an old attempt's outcome arrives after a newer attempt started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.events import MessageContent
from dianabot_core.telegram import calls
from dianabot_core.telegram import sender as sender_module
from dianabot_core.telegram.content import Part
from dianabot_core.telegram.ledger import Attempt, SendIntent, SendLedger, Verdict
from dianabot_core.telegram.models import SendStatus
from dianabot_core.telegram.sender import SendOutcome, SendRequest, TelegramSender
from dianabot_double import TelegramDouble
from tests.integration.test_telegram_support import (
    fresh_chat_ids,
    ledger_rows,
    sender_for,
    telegram_double,
    wait_for,
)


@pytest.fixture(scope="module")
async def double() -> AsyncIterator[TelegramDouble]:
    async with telegram_double() as double:
        yield double


@pytest.fixture
async def sender(double: TelegramDouble) -> AsyncIterator[TelegramSender]:
    double.reset()
    async with sender_for(double, request_timeout_s=1.0) as sender:
        yield sender


def _request() -> SendRequest:
    [chat] = fresh_chat_ids(1)
    return SendRequest(f"test:{time.monotonic_ns()}", chat, MessageContent(text="hola"))


async def _status(session_factory: async_sessionmaker[AsyncSession], key: str) -> SendStatus:
    return (await ledger_rows(session_factory, [key]))[key].status


async def test_a_send_cancelled_as_telegram_answers_is_recorded_as_sent(
    sender: TelegramSender,
    double: TelegramDouble,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = _request()
    real_deliver = calls.deliver
    real_finish = sender.ledger.finish

    async def deliver_then_cancelled(bot: Any, part: Part, chat_id: int) -> int | None:
        message_id = await real_deliver(bot, part, chat_id)
        # The time limit strikes the moment Telegram's answer is in.
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return message_id

    async def finish_after_checkout(attempt: Attempt, status: SendStatus, **outcome: Any) -> bool:
        await asyncio.sleep(0)  # a connection checkout that waits, before the statement leaves
        return await real_finish(attempt, status, **outcome)

    monkeypatch.setattr(sender_module, "deliver", deliver_then_cancelled)
    monkeypatch.setattr(sender.ledger, "finish", finish_after_checkout)
    sending = asyncio.create_task(sender.send(request))
    with pytest.raises(asyncio.CancelledError):
        await sending

    [message] = double.messages_for(request.chat_id)
    row = (await ledger_rows(session_factory, [request.key]))[request.key]
    assert (row.status, row.telegram_message_id) == (SendStatus.SENT, message.message_id)
    monkeypatch.undo()
    assert (await sender.send(request)).outcome is SendOutcome.ALREADY_SENT
    assert len(double.messages_for(request.chat_id)) == 1


async def test_a_send_cancelled_while_its_outcome_is_recorded_is_recorded_as_sent(
    sender: TelegramSender,
    double: TelegramDouble,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = _request()
    recording = asyncio.Event()
    real_finish = sender.ledger.finish

    async def slow_finish(attempt: Attempt, status: SendStatus, **outcome: Any) -> bool:
        if status is SendStatus.SENT:
            recording.set()
            await asyncio.sleep(0.5)  # a busy database
        return await real_finish(attempt, status, **outcome)

    monkeypatch.setattr(sender.ledger, "finish", slow_finish)
    sending = asyncio.create_task(sender.send(request))
    await recording.wait()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending

    assert await _status(session_factory, request.key) is SendStatus.SENT
    assert len(double.messages_for(request.chat_id)) == 1


async def test_a_send_cancelled_before_the_call_is_sent_on_redelivery(
    sender: TelegramSender,
    double: TelegramDouble,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Left `pending`, the intent would read as unknown and (resend_if_unknown=False) never be sent."""
    request = _request()
    started = asyncio.Event()
    real_start = sender.ledger.start_attempt

    async def slow_start(intent: SendIntent, **options: Any) -> Attempt | None:
        attempt = await real_start(intent, **options)
        started.set()
        await asyncio.sleep(0.5)  # the commit's answer is slow to come back
        return attempt

    monkeypatch.setattr(sender.ledger, "start_attempt", slow_start)
    sending = asyncio.create_task(sender.send(request))
    await started.wait()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    monkeypatch.undo()

    assert await _status(session_factory, request.key) is SendStatus.RETRY
    assert double.messages_for(request.chat_id) == []
    assert (await sender.send(request)).outcome is SendOutcome.SENT
    assert len(double.messages_for(request.chat_id)) == 1


async def test_a_late_outcome_of_an_old_attempt_never_overwrites_a_newer_attempts(
    sender: TelegramSender, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    request = _request()
    intent = SendIntent(request.key, request.chat_id, None, "bulk", "sendMessage")
    ledger = SendLedger(sender.engine, lease_s=0.2)

    async def attempt() -> Attempt:
        started = await ledger.start_attempt(intent, resend_if_unknown=True, pause_scopes=[])
        assert started is not None
        return started

    async def lease_runs_out() -> None:
        await wait_for(lambda: _lease_over(ledger, intent), within=5, interval=0.05)

    # An attempt that outlived its lease may still say what became of it, while no other started.
    first = await attempt()
    await lease_runs_out()
    assert await ledger.finish(first, SendStatus.RETRY, error="503") is True

    # Once a newer attempt started, the old one's outcome changes nothing, whichever comes first.
    second = await attempt()
    await lease_runs_out()
    third = await attempt()
    assert third.number == second.number + 1
    assert await ledger.finish(second, SendStatus.SENT, message_id=1) is False
    assert await _status(session_factory, request.key) is SendStatus.PENDING
    assert await ledger.finish(third, SendStatus.SENT, message_id=2) is True
    assert await ledger.finish(second, SendStatus.RETRY, error="late 503") is False

    row = (await ledger_rows(session_factory, [request.key]))[request.key]
    assert (row.status, row.telegram_message_id, row.attempts) == (SendStatus.SENT, 2, 3)


async def _lease_over(ledger: SendLedger, intent: SendIntent) -> bool:
    return (await ledger.prepare(intent, resend_if_unknown=True)).verdict is Verdict.SEND
