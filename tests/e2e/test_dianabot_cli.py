"""The operator commands that send nothing run without a bot token (none is set here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from dianabot_core.schedule.jobs import JOBS
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m module args` with the test's Kafka and database and no Telegram settings at all."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    environment.update(
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_KAFKA__CONNECT_TIMEOUT_S="5",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_schedulers_list_needs_no_bot_token() -> None:
    result = run("schedulers", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert [job["job"] for job in json.loads(result.stdout)] == [job.name for job in JOBS]
    assert "database unavailable" not in result.stderr
    assert "BOT_TOKEN" not in result.stderr


def test_python_m_schedulers_trigger_needs_no_bot_token() -> None:
    topic = f"test.cli.ticks.{uuid.uuid4().hex[:10]}"
    result = run(
        "schedulers", "trigger", "scheduled_daily_cleanup", "--json", DIANABOT_SCHEDULER__TICK_TOPIC=topic
    )
    assert result.returncode == 0, result.stderr
    tick = json.loads(result.stdout)
    assert (tick["job"], tick["published"]) == ("scheduled_daily_cleanup", True)
    assert uuid.UUID(tick["event_id"])


def test_dianabot_jobs_list_and_lag_need_no_bot_token() -> None:
    jobs = run("dianabot_cli", "jobs", "list", "--json")
    assert jobs.returncode == 0, jobs.stderr
    assert [job["job"] for job in json.loads(jobs.stdout)] == [job.name for job in JOBS]

    table = run("dianabot_cli", "jobs", "list")  # not a terminal: the aligned text table
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "timezone: Europe/Madrid"
    assert table.stdout.splitlines()[1].split()[:4] == ["JOB", "CRON", "ON", "CATCH-UP"]

    lag = run("dianabot_cli", "lag", "--group", f"dianabot.test.nobody.{uuid.uuid4().hex[:8]}", "--json")
    assert lag.returncode == 0, lag.stderr
    assert json.loads(lag.stdout) == []


def test_an_unknown_job_names_the_listing_command_of_the_tool_in_use() -> None:
    result = run("dianabot_cli", "jobs", "trigger", "scheduled_daily_clenaup")
    assert result.returncode == 2
    assert result.stderr.strip() == "unknown job 'scheduled_daily_clenaup'; see `dianabot jobs list`"
