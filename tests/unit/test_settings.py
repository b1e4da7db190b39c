"""Configuration errors are one readable line naming the variable, and secrets never leak."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.settings import ConfigError, KafkaSettings, load_section, load_settings

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


# --- one tree: every section nested under the root, read from the environment and .env -----------


def _env_file(tmp_path: Path, *lines: str) -> None:
    base = [f"DIANABOT_TELEGRAM__BOT_TOKEN={TOKEN}", "DIANABOT_TELEGRAM__ADMIN_CHAT_ID=5"]
    (tmp_path / ".env").write_text("\n".join([*base, *lines]) + "\n")


def test_a_sections_variable_in_env_file_is_read(tmp_path: Path) -> None:
    _env_file(
        tmp_path,
        "DIANABOT_SENDER__GLOBAL_RATE_PER_S=20",
        'DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS=["P3D", "P1D"]',
        "DIANABOT_CONTENT__POSTS_PER_RUN=7",
        "DIANABOT_CHANNELS__APPROVALS_PER_RUN=9",
        'DIANABOT_GAMIFICATION__DAILY_GIFT_BONUSES={"2": 5}',
        "DIANABOT_MONITORING__REMIND_EVERY=PT2H",
    )
    settings = load_settings()
    assert settings.sender.global_rate_per_s == 20
    assert settings.subscriptions.reminder_windows == (timedelta(days=3), timedelta(days=1))
    assert settings.content.posts_per_run == 7
    assert settings.channels.approvals_per_run == 9
    assert settings.gamification.daily_gift_bonuses == {2: 5}
    assert settings.monitoring.remind_every == timedelta(hours=2)


def test_the_environment_wins_over_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _env_file(tmp_path, "DIANABOT_SENDER__GLOBAL_RATE_PER_S=20", "DIANABOT_SENDER__PARALLEL_SENDS=4")
    monkeypatch.setenv("DIANABOT_SENDER__GLOBAL_RATE_PER_S", "10")
    settings = load_settings()
    assert (settings.sender.global_rate_per_s, settings.sender.parallel_sends) == (10, 4)


def test_scheduler_variables_in_env_file_no_longer_stop_the_process(tmp_path: Path) -> None:
    _env_file(
        tmp_path,
        "DIANABOT_SCHEDULER__HTTP_PORT=9999",
        "DIANABOT_SCHEDULER__DISABLED_JOBS=scheduled_weekly_leaderboard,scheduled_daily_job_summary",
        'DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON="30 4 * * *"',
        "PG_PORT=5432",  # not ours: ignored
    )
    settings = load_settings()
    assert settings.scheduler.http_port == 9999
    assert settings.scheduler.disabled_jobs == {"scheduled_weekly_leaderboard", "scheduled_daily_job_summary"}
    assert settings.scheduler.jobs["scheduled_daily_cleanup"].cron == "30 4 * * *"
    # A tool reading one section (no bot token needed) sees the same values.
    (tmp_path / ".env").write_text("DIANABOT_SCHEDULER__HTTP_PORT=9999\n")
    assert load_section(SchedulerSettings).http_port == 9999


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("DIANABOT_SENDER__GLOBAL_RATE", "environment"),  # a typo inside a section
        ("DIANABOT_SENDERS__GLOBAL_RATE_PER_S", "environment"),  # a section that does not exist
        ("DIANABOT_TIMEZONE_NAME", ".env"),
        ("DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRONS", ".env"),
    ],
)
def test_an_unknown_variable_stops_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, where: str
) -> None:
    if where == ".env":
        _env_file(tmp_path, f"{name}=1")
    else:
        _valid_env(monkeypatch)
        monkeypatch.setenv(name, "1")
    for load in (load_settings, lambda: load_section(KafkaSettings)):
        with pytest.raises(ConfigError) as caught:
            load()
        assert str(caught.value) == f"invalid configuration: {name}: unknown variable (in the {where})"


def test_tools_own_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _valid_env(monkeypatch)
    monkeypatch.setenv("DIANABOT_TEST_DATABASE_URL", "postgresql+asyncpg://u:p@h/db")
    monkeypatch.setenv("DIANABOT_BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")
    assert load_settings().telegram.admin_chat_id == -100123


def test_a_secret_never_appears_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _env_file(
        tmp_path,
        "DIANABOT_DATABASE__URL=postgresql+asyncpg://u:db-pass-xyz@h/db",
        "DIANABOT_KAFKA__SASL_PASSWORD=kafka-pass-123",
        "DIANABOT_SENDER__GLOBAL_RATE_PER_S=-1",
        'DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS=["P1D", "-P1D"]',
    )
    monkeypatch.setenv("DIANABOT_TELEGRAM__BOT_TOKEN", "not-a-token-secret-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "DIANABOT_TELEGRAM__BOT_TOKEN: Value error, expected the form <bot id>:<secret>" in message
    assert "DIANABOT_SENDER__GLOBAL_RATE_PER_S: Input should be greater than 0" in message
    assert "DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS: Value error, durations must be positive" in message
    for secret in ("not-a-token-secret-1", "db-pass-xyz", "kafka-pass-123", TOKEN, "super-secret"):
        assert secret not in message

    # A secret under a misspelt name is named, not echoed, either.
    monkeypatch.setenv("DIANABOT_TELEGRAM_BOT_TOKEN", TOKEN)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid configuration: DIANABOT_TELEGRAM_BOT_TOKEN: unknown variable (in the environment)"
    )


def test_a_value_that_must_be_json_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _valid_env(monkeypatch)
    monkeypatch.setenv("DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS", "[P3D, P1D")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid configuration: DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS: not valid JSON "
        "(lists and mappings are written as JSON)"
    )
