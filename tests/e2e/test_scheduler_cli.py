"""The operator commands as operators run them: `python -m schedulers list` and `... trigger JOB`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from dianabot_contracts.events import SchedulerTick
from dianabot_core.schedule.jobs import JOBS
from schedulers.state import tick_event_id
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    environment.update(
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN="123456:cli-secret-token",
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_KAFKA__CONNECT_TIMEOUT_S="5",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "schedulers", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_shows_every_job_with_its_next_fire_times_in_the_bot_timezone() -> None:
    result = run_cli("list", "--json", DIANABOT_SCHEDULER__DISABLED_JOBS="scheduled_weekly_leaderboard")
    assert result.returncode == 0, result.stderr
    jobs = {job["job"]: job for job in json.loads(result.stdout)}
    assert list(jobs) == [job.name for job in JOBS]
    cleanup = jobs["scheduled_daily_cleanup"]
    assert (cleanup["cron"], cleanup["timezone"], cleanup["catch_up"]) == (
        "0 3 * * *",
        "Europe/Madrid",
        "run_once",
    )
    fires = [datetime.fromisoformat(t) for t in cleanup["next_fires"]]
    assert len(fires) == 3
    assert all(t.hour == 3 and t.minute == 0 for t in fires)  # local time, with its UTC offset
    assert not jobs["scheduled_weekly_leaderboard"]["enabled"]
    assert not jobs["scheduled_secondly_test_probe"]["enabled"]
    assert "cli-secret-token" not in result.stdout + result.stderr

    table = run_cli("list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "timezone: Europe/Madrid"
    assert "scheduled_minutely_post_publishing" in table.stdout


async def test_trigger_emits_a_manual_tick_with_its_own_event_id() -> None:
    topic = f"test.cli.ticks.{uuid.uuid4().hex[:10]}"
    result = run_cli("trigger", "scheduled_daily_cleanup", DIANABOT_SCHEDULER__TICK_TOPIC=topic)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "published", result.stdout
    event_id = uuid.UUID(result.stdout.split("event ")[1].split()[0])

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=TEST_BOOTSTRAP, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    envelope = json.loads(record.value or b"{}")
    tick = SchedulerTick.model_validate(envelope["payload"])
    assert envelope["event_id"] == str(event_id)
    assert (tick.job, tick.kind) == ("scheduled_daily_cleanup", "manual")
    assert event_id != tick_event_id(tick.job, tick.slot)  # never mistaken for a scheduled tick


def test_trigger_refuses_an_unknown_job() -> None:
    result = run_cli("trigger", "scheduled_daily_clenaup")
    assert result.returncode == 2
    assert result.stderr.strip() == "unknown job 'scheduled_daily_clenaup'; see `python -m schedulers list`"
