"""Settings shared by every test layer; real-service fixtures live in integration/ and e2e/."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr

from core.settings import DatabaseSettings, KafkaSettings, Settings, TelegramSettings

TEST_DATABASE_URL = os.environ.get(
    "DIANABOT_TEST_DATABASE_URL",
    "postgresql+asyncpg://dianabot:dianabot@127.0.0.1:{port}/dianabot_test".format(
        port=os.environ.get("PG_PORT", "5432")
    ),
)
TEST_BOOTSTRAP = os.environ.get(
    "DIANABOT_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:{}".format(os.environ.get("KAFKA_PORT", "9092"))
)


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: the devstack's Kafka, the test database, the Bot API double's address."""
    values: dict[str, object] = {
        "kafka": KafkaSettings(bootstrap_servers=TEST_BOOTSTRAP, connect_timeout_s=5),
        "database": DatabaseSettings(url=SecretStr(TEST_DATABASE_URL)),
        "telegram": TelegramSettings(
            bot_token=SecretStr("123456:test-token"),
            api_base_url="http://127.0.0.1:8081",
            admin_chat_id=-1000000000001,
        ),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()
