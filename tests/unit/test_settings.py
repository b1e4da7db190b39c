"""Configuration errors are one readable line naming the variable, and secrets never leak."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import ConfigError, load_settings

TOKEN = "987654:super-secret-token-value"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("DIANABOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def _valid_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIANABOT_TELEGRAM__BOT_TOKEN", TOKEN)
    monkeypatch.setenv("DIANABOT_TELEGRAM__ADMIN_CHAT_ID", "-100123")


def test_missing_token_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "DIANABOT_TELEGRAM__BOT_TOKEN: is required" in message
    assert "DIANABOT_TELEGRAM__ADMIN_CHAT_ID: is required" in message


def test_defaults_point_at_the_devstack(monkeypatch: pytest.MonkeyPatch) -> None:
    _valid_env(monkeypatch)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.database.safe_url() == "postgresql+asyncpg://dianabot:***@127.0.0.1:5432/dianabot"
    assert settings.telegram.bot_token.get_secret_value() == TOKEN


def test_secrets_never_appear_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    _valid_env(monkeypatch)
    monkeypatch.setenv("DIANABOT_KAFKA__SASL_PASSWORD", "kafka-pass-123")
    settings = load_settings()
    dumped = repr(settings) + str(settings) + settings.model_dump_json()
    assert TOKEN not in dumped
    assert "super-secret" not in dumped
    assert "kafka-pass-123" not in dumped
    assert "dianabot:dianabot@" not in dumped


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DIANABOT_TIMEZONE", "Mars/Olympus", "DIANABOT_TIMEZONE: Value error, unknown IANA timezone"),
        ("DIANABOT_KAFKA__BOOTSTRAP_SERVERS", "localhost", "DIANABOT_KAFKA__BOOTSTRAP_SERVERS"),
        ("DIANABOT_DATABASE__URL", "mysql://u:pw-xyz@h/db", "DIANABOT_DATABASE__URL: Value error, must be"),
        ("DIANABOT_TELEGRAM__ADMIN_CHAT_ID", "not-a-number", "DIANABOT_TELEGRAM__ADMIN_CHAT_ID"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    _valid_env(monkeypatch)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "pw-xyz" not in message  # a bad URL's password is not echoed


def test_malformed_token_is_rejected_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _valid_env(monkeypatch)
    monkeypatch.setenv("DIANABOT_TELEGRAM__BOT_TOKEN", "leaky-token-without-id")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "DIANABOT_TELEGRAM__BOT_TOKEN" in str(caught.value)
    assert "leaky-token" not in str(caught.value)


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"DIANABOT_TELEGRAM__BOT_TOKEN={TOKEN}\nDIANABOT_TELEGRAM__ADMIN_CHAT_ID=5\nDIANABOT_TIMEZONE=UTC\n"
    )
    settings = load_settings()
    assert settings.timezone == "UTC"
    assert settings.telegram.admin_chat_id == 5
