"""The heartbeat's pure decisions: lag, dead letters, missed slots, what cleared, reminders, watchdog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from consumers.jobs import ScheduledJobs
from consumers.monitoring import handled_jobs, notice_text
from dianabot_contracts.events import SchedulerTick
from dianabot_core.findings import CheckResult, Finding
from dianabot_core.incidents import IncidentView, Notice, notice_due
from dianabot_core.lag import GroupLag
from dianabot_core.monitoring import (
    HEARTBEAT_JOB,
    cleared,
    dead_letter_findings,
    lag_findings,
    merge,
    previous_slot,
    stale_jobs,
    watched_jobs,
)
from dianabot_core.monitoring_settings import MonitoringSettings
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import JOBS_BY_NAME, JobDefinition
from dianabot_core.watchdog import Watchdog

UTC_ZONE = ZoneInfo("UTC")
MADRID = ZoneInfo("Europe/Madrid")
SETTINGS = MonitoringSettings(lag_threshold=100)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _lag(group: str, lag: int, topic: str = "t", partition: int = 0) -> GroupLag:
    return GroupLag(group, topic, partition, 0, lag, lag)


# --- lag -----------------------------------------------------------------------------------------


def test_lag_above_the_threshold_per_group_is_a_finding_and_retry_groups_are_left_out() -> None:
    lags = [
        _lag("dianabot.a", 60, partition=0),
        _lag("dianabot.a", 60, partition=1),  # 120 in all: above 100
        _lag("dianabot.b", 100),  # at the threshold: fine
        _lag("dianabot.a.retry.1", 5000),  # waiting for its due time by design
        _lag("dianabot.cli.dlq-replay", 5000),
    ]
    result = lag_findings(lags, SETTINGS)
    assert [f.key for f in result.findings] == ["monitoring.lag:dianabot.a"]
    assert result.findings[0].details["lag"] == 120
    assert result.covers("monitoring.lag:dianabot.b")
    assert not result.covers("monitoring.dead_letters:x")


def test_the_bulk_lane_may_hold_a_broadcasts_backlog_other_groups_may_not() -> None:
    lags = [
        _lag("dianabot.notifications.send.bulk", 10_000),
        _lag("dianabot.notifications.send.critical", 1500),
    ]
    result = lag_findings(lags, MonitoringSettings())
    assert [f.key for f in result.findings] == ["monitoring.lag:dianabot.notifications.send.critical"]
    flooded = lag_findings([_lag("dianabot.notifications.send.bulk", 60_000)], MonitoringSettings())
    assert [f.details["lag"] for f in flooded.findings] == [60_000]


# --- dead letters --------------------------------------------------------------------------------


def test_dead_letters_alert_on_growth_since_the_previous_figure_only() -> None:
    assert dead_letter_findings("dlq", None, 40, SETTINGS).findings == []  # first look: a baseline
    assert dead_letter_findings("dlq", 40, 40, SETTINGS).findings == []
    assert dead_letter_findings("dlq", 40, 3, SETTINGS).findings == []  # the topic was recreated
    [grown] = dead_letter_findings("dlq", 40, 43, SETTINGS).findings
    assert grown.key == "monitoring.dead_letters:dlq"
    assert grown.details["new"] == 3
    strict = MonitoringSettings(dead_letter_threshold=5)
    assert dead_letter_findings("dlq", 40, 43, strict).findings == []


# --- stale jobs ----------------------------------------------------------------------------------


def test_previous_slot_is_the_last_slot_at_or_before() -> None:
    minutely = CronSchedule("* * * * *", UTC_ZONE)
    assert previous_slot(minutely, T0 + timedelta(seconds=30)) == T0
    assert previous_slot(minutely, T0) == T0
    weekly = CronSchedule("0 20 * * 0", UTC_ZONE)  # Sundays 20:00; T0 is a Sunday noon
    assert previous_slot(weekly, T0) == datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
    daily_madrid = CronSchedule("0 4 * * *", MADRID)
    assert previous_slot(daily_madrid, T0) == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # 04:00 CET


def _job(cron: str, grace_s: float = 60, name: str = "job") -> JobDefinition:
    return JobDefinition(name, cron, "test job", misfire_grace_s=grace_s)


def test_a_job_is_stale_once_its_slot_is_past_grace_and_allowance_without_a_finished_run() -> None:
    hourly = _job("0 * * * *", grace_s=600)
    allowance = timedelta(minutes=10)
    last = {"job": T0 - timedelta(hours=1)}  # the 11:00 run finished; 12:00 is due at 12:20

    def stale(now: datetime, finished: dict[str, datetime]) -> list[Finding]:
        return stale_jobs([hourly], finished, now=now, tz=UTC_ZONE, allowance=allowance, since=None).findings

    assert stale(T0 + timedelta(minutes=19), last) == []
    [finding] = stale(T0 + timedelta(minutes=20), last)
    assert (finding.key, finding.severity) == ("monitoring.stale_job:job", "critical")
    assert finding.details["due_slot"] == T0.isoformat()
    assert stale(T0 + timedelta(minutes=20), {"job": T0}) == []


def test_a_job_that_never_ran_counts_from_when_jobs_began_here() -> None:
    daily = _job("0 3 * * *")
    at = T0 + timedelta(hours=2)

    def stale(since: datetime | None) -> list[Finding]:
        return stale_jobs(
            [daily], {}, now=at, tz=UTC_ZONE, allowance=timedelta(minutes=10), since=since
        ).findings

    assert stale(None) == []  # no job ever ran: nothing to judge by
    assert stale(T0 - timedelta(hours=1)) == []  # deployed after today's 03:00
    assert [f.details["last_finished_slot"] for f in stale(T0 - timedelta(days=2))] == ["never"]


def test_disabled_jobs_and_the_heartbeat_are_not_watched() -> None:
    names = {job.name for job in watched_jobs(JOBS_BY_NAME.values())}
    assert HEARTBEAT_JOB not in names
    assert "scheduled_secondly_test_probe" not in names  # disabled in the table
    assert "scheduled_daily_cleanup" in names


# --- what cleared --------------------------------------------------------------------------------


def test_open_incidents_clear_when_their_check_ran_and_did_not_find_them() -> None:
    lag = lag_findings([_lag("dianabot.a", 500)], SETTINGS)
    dead = dead_letter_findings("dlq", 1, 1, SETTINGS)
    result = merge([lag, dead], ["lag", "dead_letters"])
    now = T0
    open_keys = {
        "monitoring.lag:dianabot.a": now,  # still found
        "monitoring.lag:dianabot.b": now,  # covered, gone
        "monitoring.dead_letters:dlq": now,  # covered, gone
        "monitoring.stale_job:x": now,  # its check did not run: stays
        "monitoring.check_failed:lag": now,  # the lag check ran again
        "economy.drift": now - timedelta(days=3),  # raised elsewhere, quiet for long
        "post.failed:p1": now - timedelta(hours=1),  # raised elsewhere, recent
    }
    done = cleared(open_keys, result, now=now, quiet_after=timedelta(days=2))
    assert set(done) == {
        "monitoring.lag:dianabot.b",
        "monitoring.dead_letters:dlq",
        "monitoring.check_failed:lag",
        "economy.drift",
    }
    assert done["economy.drift"] == "not raised again for 72 h"


def test_a_failed_check_covers_nothing_so_its_incidents_stay() -> None:
    failed = CheckResult([Finding("monitoring.check_failed:lag", "warning", "boom")])
    result = merge([failed], ["lag"])
    done = cleared({"monitoring.lag:dianabot.a": T0}, result, now=T0, quiet_after=timedelta(days=2))
    assert done == {}


# --- reminders -----------------------------------------------------------------------------------


def test_a_notice_is_due_when_never_sent_after_the_remind_interval_or_on_escalation() -> None:
    hour = timedelta(hours=1)
    assert notice_due(None, T0, hour)
    assert not notice_due(T0, T0 + timedelta(minutes=59), hour)
    assert notice_due(T0, T0 + hour, hour)
    assert notice_due(T0, T0 + timedelta(minutes=1), hour, was="warning", now_severity="critical")
    assert not notice_due(T0, T0 + timedelta(minutes=1), hour, was="critical", now_severity="warning")


def test_notice_texts_name_the_incident_and_the_recovery() -> None:
    incident = IncidentView("monitoring.lag:g", "critical", "g is 500 behind", {"lag": 500}, T0, 1)
    opened = notice_text(Notice("k", incident, "opened"))
    assert opened.startswith("🔴 CRITICAL: new incident\ng is 500 behind")
    assert "lag: 500" in opened
    closed = IncidentView(
        "monitoring.lag:g", "critical", "g is 500 behind", {}, T0, 1, T0 + timedelta(hours=2)
    )
    text = notice_text(Notice("k", closed, "resolved"), "Cleared: the heartbeat no longer finds it.")
    assert text.startswith("✅ Resolved: monitoring.lag:g\nCleared")
    assert "2 h 0 min" in text


# --- the watchdog --------------------------------------------------------------------------------


async def test_the_watchdog_tells_once_after_repeated_failures_and_once_on_recovery() -> None:
    down = Finding("monitoring.database", "critical", "PostgreSQL is unreachable: refused.")
    state: dict[str, Finding | None] = {"probe": down}
    told: list[str] = []

    async def probe() -> Finding | None:
        return state["probe"]

    async def notify(text: str) -> None:
        told.append(text)

    watchdog = Watchdog({"PostgreSQL": probe}, notify, interval_s=1, failures=3, origin="host:1")
    for _ in range(2):
        await watchdog.probe_once()
    assert told == []
    for _ in range(5):
        await watchdog.probe_once()
    assert len(told) == 1
    assert told[0].startswith("🔴 CRITICAL: PostgreSQL is unreachable")
    assert "host:1" in told[0]
    state["probe"] = None
    await watchdog.probe_once()
    await watchdog.probe_once()
    assert len(told) == 2
    assert told[1].startswith("✅ Recovered: PostgreSQL")


async def test_the_watchdog_tries_again_when_the_chat_could_not_be_told() -> None:
    down = Finding("monitoring.kafka", "critical", "Kafka is unreachable.")
    attempts: list[str] = []

    async def probe() -> Finding | None:
        return down

    async def notify(text: str) -> None:
        attempts.append(text)
        if len(attempts) == 1:
            raise ConnectionError("no network")

    watchdog = Watchdog({"Kafka": probe}, notify, interval_s=1, failures=1)
    await watchdog.probe_once()
    await watchdog.probe_once()
    await watchdog.probe_once()
    assert len(attempts) == 2  # the failed one, then one that got through; no more after it


def test_only_jobs_with_a_handler_are_judged() -> None:
    registry = ScheduledJobs(HandlerGroup("monitoring_test"))

    async def cleanup(tick: SchedulerTick, ctx: HandlerContext) -> None:
        return None

    registry.scheduled("scheduled_daily_cleanup")(cleanup)
    # A job without a handler (a tick nobody handles) leaves no runs, ever: it is not judged.
    assert [job.name for job in handled_jobs(JOBS_BY_NAME.values(), registry)] == ["scheduled_daily_cleanup"]
