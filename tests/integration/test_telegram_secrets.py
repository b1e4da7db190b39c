"""The bot token stays out of traces, errors, the send ledger and logs (the sender on the Bot API double).

aiogram puts the token into every request URL (``/bot<token>/sendMessage``); aiohttp's client
spans record that URL, and some aiohttp errors quote it.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram.exceptions import TelegramNetworkError
from aiohttp import ClientOSError
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.events import MessageContent
from dianabot_core.settings import TelegramSettings, TelemetrySettings
from dianabot_core.telegram.errors import OutcomeUnknown, TelegramPermanentError, TelegramTransientError
from dianabot_core.telegram.sender import SendOutcome, SendRequest, TelegramSender
from dianabot_core.telemetry import setup_tracing
from dianabot_double import TelegramDouble
from tests.conftest import make_settings
from tests.integration.test_telegram_support import (
    fresh_chat_ids,
    ledger_rows,
    sender_settings,
    telegram_double,
)

# Shaped like a real token (bot id, colon, 35 characters), so every rule that finds one is tried.
TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"
SECRET = TOKEN.partition(":")[2]


@pytest.fixture(scope="module")
async def double() -> AsyncIterator[TelegramDouble]:
    async with telegram_double() as double:
        yield double


@pytest.fixture
async def sender(double: TelegramDouble) -> AsyncIterator[TelegramSender]:
    double.reset()
    assert double.base_url is not None
    settings = make_settings(
        telegram=TelegramSettings(
            bot_token=TOKEN, api_base_url=double.base_url, admin_chat_id=-1, request_timeout_s=0.5
        )
    )
    sender = TelegramSender.create(settings, sender_settings())
    try:
        yield sender
    finally:
        await sender.close()


def _request(text: str = "hola", **options: Any) -> SendRequest:
    [chat] = fresh_chat_ids(1)
    return SendRequest(f"test:{time.monotonic_ns()}", chat, MessageContent(text=text), **options)


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _everything_about(error: BaseException) -> str:
    """What a log line with the traceback, or a span's exception event, would show."""
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_no_span_carries_the_bot_token(sender: TelegramSender, double: TelegramDouble) -> None:
    exporter = InMemorySpanExporter()
    # Before the sender's first request: its aiohttp session is created then, and instrumented.
    setup_tracing(TelemetrySettings(), SimpleSpanProcessor(exporter))

    assert (await sender.send(_request())).outcome is SendOutcome.SENT
    double.set_faults(server_errors={"count": 1, "status": 502})
    with pytest.raises(TelegramTransientError):
        await sender.send(_request())
    double.set_faults(server_errors=None, slow={"delay": 1.0, "count": 1, "methods": ["sendMessage"]})
    with pytest.raises(OutcomeUnknown) as timed_out:
        await sender.send(_request(resend_if_unknown=True))
    missing = _request()
    double.set_faults(slow=None, chat_not_found=[missing.chat_id])
    with pytest.raises(TelegramPermanentError) as refused:
        await sender.send(missing)
    assert await sender.ban_chat_member(-1_000_000_000_000 - missing.chat_id, missing.chat_id) is True

    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "POST"]
    urls = [
        str((s.attributes or {}).get("http.url") or (s.attributes or {}).get("url.full")) for s in requests
    ]
    assert len(requests) >= 5, [s.name for s in spans]
    assert f"{double.base_url}/bot<redacted>/sendMessage" in urls
    assert any(event.name == "exception" for s in requests for event in s.events)  # the timeout
    for span in spans:
        assert SECRET not in span.to_json(), span.to_json()
    for error in (timed_out.value, refused.value):
        assert SECRET not in _everything_about(error)


async def test_an_error_quoting_the_request_url_leaves_the_token_behind(
    sender: TelegramSender,
    double: TelegramDouble,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_pipe(bot: Any, method: Any, *_: Any, **__: Any) -> Any:
        # What aiogram raises when aiohttp cannot write the request body (aiohttp names the URL).
        url = f"{double.base_url}/bot{bot.token}/{method.__api_method__}"
        try:
            raise ClientOSError(32, f"Can not write request body for {url}")
        except ClientOSError as error:
            raise TelegramNetworkError(method=method, message=f"{type(error).__name__}: {error}") from error

    monkeypatch.setattr(sender.bot.session, "make_request", broken_pipe)
    caplog.set_level(logging.INFO)
    careful, eager = _request(), _request(resend_if_unknown=True)

    assert (await sender.send(careful)).outcome is SendOutcome.UNKNOWN
    with pytest.raises(OutcomeUnknown) as unknown:
        await sender.send(eager)
    with pytest.raises(TelegramTransientError) as unrecorded:
        await sender.send_unrecorded(careful.chat_id, "PostgreSQL is down")
    with pytest.raises(TelegramTransientError) as member_call:
        await sender.ban_chat_member(-1_000_000_000_001, careful.chat_id)

    for error in (unknown.value, unrecorded.value, member_call.value):
        assert SECRET not in _everything_about(error)
        assert "Can not write request body for" in str(error)
    rows = await ledger_rows(session_factory, [careful.key, eager.key])
    assert all(f"{double.base_url}/bot<redacted>/sendMessage" in str(r.error) for r in rows.values())
    assert "send outcome unknown" in caplog.text
    assert SECRET not in caplog.text
