"""A record the consumers handle shows on /metrics in FastStream's middleware metrics, secrets never.

The users handlers through the whole consumer stack (``build_consumers``: the broker, its
middlewares, the batch subscribers, the pipeline and the test database), Kafka in memory
(``TestKafkaBroker``), ``/metrics`` served by the health server as the service serves it. The
settings carry a Bot API token and a SASL password that must appear in no label value.
"""

from __future__ import annotations

import random

from faststream.kafka import TestKafkaBroker
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import users
from consumers.app import build_consumers
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserRegistered
from dianabot_contracts.topics import USERS
from dianabot_core.settings import KafkaSettings, TelegramSettings
from tests.conftest import TEST_BOOTSTRAP, make_settings
from tests.integration.test_health import get, serving

PREFIX = "dianabot_faststream"
TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"
PASSWORD = "sasl-Pa55word-that-must-stay-hidden"


def _received(topic: str) -> float:
    return REGISTRY.get_sample_value(f"{PREFIX}_received_messages_total", {"topic": topic}) or 0.0


async def test_a_handled_record_is_counted_by_topic_on_metrics_without_a_secret(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    settings = make_settings(
        kafka=KafkaSettings(
            bootstrap_servers=TEST_BOOTSTRAP,
            security_protocol="SASL_PLAINTEXT",
            sasl_username="dianabot",
            sasl_password=SecretStr(PASSWORD),
        ),
        telegram=TelegramSettings(
            bot_token=SecretStr(TOKEN), api_base_url="http://127.0.0.1:8081", admin_chat_id=-1
        ),
    )
    consumers = build_consumers(settings, groups=[users.handlers])
    groups_reading_users = sum(USERS in spec.topics for spec in users.handlers.specs)
    assert groups_reading_users >= 2
    user_id = random.randint(10**12, 2**62)
    envelope = EventEnvelope.wrap(UserRegistered(user_id=user_id, telegram_id=user_id), producer="bot")
    before = _received(USERS.name)
    try:
        async with TestKafkaBroker(consumers.broker):
            await consumers.broker.publish(
                envelope.to_body(), USERS.name, key=envelope.key.encode(), headers=envelope.to_headers()
            )
            async with serving({}) as server:
                status, scraped = await get(server, "/metrics")
    finally:
        await consumers.resources.engine.dispose()

    assert status == 200
    # Each of the topic's consumer groups read the record once.
    assert _received(USERS.name) - before == groups_reading_users
    assert f'{PREFIX}_received_messages_total{{topic="{USERS.name}"}}' in scraped
    assert f'{PREFIX}_in_process_messages{{topic="{USERS.name}"}} 0.0' in scraped
    assert 'dianabot_events_total{handler="dianabot.users.register",outcome="handled"}' in scraped
    for secret in (TOKEN, TOKEN.partition(":")[2], PASSWORD):
        assert secret not in scraped
