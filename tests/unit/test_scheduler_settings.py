"""Scheduler settings: DIANABOT_SCHEDULER__ variables switch jobs and override their policies."""

from __future__ import annotations

import os

import pytest

from dianabot_core.schedule.jobs import CatchUp
from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.settings import ConfigError, load_section


def load_scheduler_settings() -> SchedulerSettings:
    return load_section(SchedulerSettings)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DIANABOT_SCHEDULER__"):
            monkeypatch.delenv(name)


def enabled() -> set[str]:
    return {job.name for job in load_scheduler_settings().resolve_jobs() if job.enabled}


def test_by_default_every_job_but_the_test_probe_runs() -> None:
    names = enabled()
    assert "scheduled_daily_cleanup" in names
    assert "scheduled_secondly_test_probe" not in names


def test_jobs_are_switched_off_and_on_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DIANABOT_SCHEDULER__DISABLED_JOBS", "scheduled_weekly_leaderboard, scheduled_daily_job_summary"
    )
    names = enabled()
    assert "scheduled_weekly_leaderboard" not in names
    assert "scheduled_daily_job_summary" not in names
    assert "scheduled_daily_cleanup" in names

    monkeypatch.setenv(
        "DIANABOT_SCHEDULER__ENABLED_JOBS", "scheduled_secondly_test_probe,scheduled_daily_cleanup"
    )
    assert enabled() == {"scheduled_secondly_test_probe", "scheduled_daily_cleanup"}


def test_per_job_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON", "30 4 * * *")
    monkeypatch.setenv("DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CATCH_UP", "skip")
    monkeypatch.setenv("DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__MISFIRE_GRACE_S", "60")
    monkeypatch.setenv("DIANABOT_SCHEDULER__JOBS__SCHEDULED_SECONDLY_TEST_PROBE__ENABLED", "true")
    jobs = {job.name: job for job in load_scheduler_settings().resolve_jobs()}
    cleanup = jobs["scheduled_daily_cleanup"]
    assert (cleanup.cron, cleanup.catch_up, cleanup.misfire_grace_s) == ("30 4 * * *", CatchUp.SKIP, 60)
    assert jobs["scheduled_secondly_test_probe"].enabled


def test_unknown_jobs_and_bad_values_stop_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIANABOT_SCHEDULER__DISABLED_JOBS", "scheduled_daily_clenaup")
    with pytest.raises(ConfigError, match="unknown jobs scheduled_daily_clenaup"):
        load_scheduler_settings()
    monkeypatch.delenv("DIANABOT_SCHEDULER__DISABLED_JOBS")
    monkeypatch.setenv("DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON", "99 4 * * *")
    monkeypatch.setenv("DIANABOT_SCHEDULER__STANDBY_RETRY_S", "5")
    with pytest.raises(ConfigError) as raised:
        load_scheduler_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert "DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON: Value error, not a valid cron" in message
    assert "DIANABOT_SCHEDULER__STANDBY_RETRY_S: Input should be less than or equal to 2" in message
