"""The consumers' app stopping while a handler is mid-send: the send completes and is recorded.

The broker waits for the handlers in flight when it stops; the sender (its Bot API session and its
ledger connections) must outlive that wait.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import consumers.app
import dianabot_core.runtime
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import MessageContent, UserActivity
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings, TelemetrySettings
from dianabot_core.telegram.models import SendStatus
from dianabot_core.telegram.sender import SendOutcome, SendRequest, TelegramSender
from tests.integration.pipeline_support import RawProducer, unique_topic
from tests.integration.test_telegram_support import (
    fresh_chat_ids,
    ledger_rows,
    sender_settings,
    settings_for,
    telegram_double,
    wait_for,
)


async def test_a_handler_mid_send_when_the_app_stops_completes_its_send(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Process-wide garbage-collector settings are the service's, not pytest's.
    monkeypatch.setattr(consumers.app, "freeze_startup_objects", lambda: None)
    monkeypatch.setattr(dianabot_core.runtime, "watch_gc_pauses", lambda: None)
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    [chat] = fresh_chat_ids(1)
    outcomes: list[SendOutcome] = []

    @group.handler(UserActivity, action="greet", topics=(topic,), timeout_s=30)
    async def greet(event: UserActivity, ctx: HandlerContext[Services]) -> None:
        request = SendRequest(f"test:{ctx.envelope.event_id}", chat, MessageContent(text="hola"))
        outcomes.append((await ctx.services.sender.send(request)).outcome)

    envelope = EventEnvelope.wrap(UserActivity(user_id=1, at=datetime.now(UTC)), producer="test")
    async with telegram_double() as double:
        double.set_faults(slow={"delay": 1.5, "methods": ["sendMessage"]})
        settings = settings_for(double).model_copy(update={"telemetry": TelemetrySettings(http_port=0)})
        sender = TelegramSender.create(settings, sender_settings())
        app = consumers.app.create_app(settings, groups=[group], services=Services(telegram=sender))
        async with app.lifespan_context(), RawProducer(kafka) as producer:
            await app.start()
            try:
                await producer.send_event(topic.name, envelope)
                await wait_for(lambda: bool(double.requests_for("sendMessage", chat)), within=30)
            finally:
                await app.stop()  # while Telegram takes 1.5 s to answer

        assert outcomes == [SendOutcome.SENT]
        key = f"test:{envelope.event_id}"
        row = (await ledger_rows(session_factory, [key]))[key]
        assert row.status is SendStatus.SENT
        assert [m.message_id for m in double.messages_for(chat)] == [row.telegram_message_id]
