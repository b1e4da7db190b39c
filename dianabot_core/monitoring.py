"""The heartbeat's checks: what is wrong now, as findings with a stable alert key (``findings.py``).

* ``lag_check``: consumer groups (``dianabot_core/lag.py``) further behind than the threshold; retry groups
  are left out, since their records wait for their due time by design;
* ``dead_letter_check``: records added to the dead-letter topic since the previous heartbeat (its
  end offsets, remembered in ``monitoring_counters``);
* ``parked_outbox_check`` / ``stored_dead_letter_check`` (``dianabot_core/stranded.py``): what Kafka would
  not take and PostgreSQL keeps instead; alerts stay open while such rows exist;
* ``stale_jobs``: scheduled jobs whose last finished run is for a slot older than the schedule's
  previous slot, once that slot is past its misfire grace plus a run allowance (pure);
* PostgreSQL and Kafka reachability within a short time limit (the probes of ``dianabot_core/watchdog.py``,
  which also watch from inside each consumer process when the heartbeat itself cannot run).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from aiokafka.structs import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dianabot_core.findings import KEY_PREFIX, CheckResult, Finding
from dianabot_core.incidents import read_counter, write_counter
from dianabot_core.jobs import JobRun, JobRunStatus
from dianabot_core.kafka import admin_client
from dianabot_core.lag import GroupLag, group_lags, log_bounds
from dianabot_core.monitoring_settings import MonitoringSettings
from dianabot_core.pipeline.errors import describe
from dianabot_core.pipeline.handlers import is_retry_group
from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import JobDefinition
from dianabot_core.settings import KafkaSettings
from dianabot_core.stranded import parked_outbox_check, stored_dead_letter_check
from dianabot_core.watchdog import DATABASE_KEY, KAFKA_KEY, Probe, database_probe, kafka_probe

logger = logging.getLogger("dianabot.monitoring")

HEARTBEAT_JOB = "scheduled_minutely_monitoring_heartbeat"


# --- lag -----------------------------------------------------------------------------------------


def lag_key(group: str) -> str:
    return f"{KEY_PREFIX}lag:{group}"


def lag_findings(lags: Iterable[GroupLag], settings: MonitoringSettings) -> CheckResult:
    """One finding per watched group whose total lag is above the threshold."""
    totals: dict[str, int] = defaultdict(int)
    topics: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for lag in lags:
        if is_retry_group(lag.group) or lag.group.startswith(settings.lag_ignored_prefixes):
            continue
        totals[lag.group] += lag.lag
        topics[lag.group][lag.topic] += lag.lag
    findings = [
        Finding(
            lag_key(group),
            "warning",
            f"Consumer group {group} is {total} records behind "
            f"(threshold {settings.lag_threshold_for(group)}).",
            {"group": group, "lag": total, "topics": dict(topics[group])},
        )
        for group, total in sorted(totals.items())
        if total > settings.lag_threshold_for(group)
    ]
    return CheckResult(findings, prefixes=(lag_key(settings.lag_group_prefix),))


async def lag_check(kafka: KafkaSettings, settings: MonitoringSettings) -> CheckResult:
    return lag_findings(await group_lags(kafka, prefix=settings.lag_group_prefix), settings)


# --- dead letters --------------------------------------------------------------------------------


def dead_letter_key(topic: str) -> str:
    return f"{KEY_PREFIX}dead_letters:{topic}"


def dead_letter_findings(
    topic: str, previous: int | None, current: int, settings: MonitoringSettings
) -> CheckResult:
    """A finding when the topic grew by at least the threshold since the previous figure."""
    key = dead_letter_key(topic)
    grown = 0 if previous is None or current < previous else current - previous  # < : topic recreated
    findings = []
    if grown >= settings.dead_letter_threshold:
        findings.append(
            Finding(
                key,
                "warning",
                f"{grown} new dead letters on {topic} since the previous heartbeat ({current} in all); "
                "see `dianabot dlq list`.",
                {"topic": topic, "new": grown, "end_offsets_total": current},
            )
        )
    return CheckResult(findings, keys=frozenset({key}))


async def topic_end_total(kafka: KafkaSettings, topic: str) -> int:
    """The sum of the topic's end offsets: how many records it ever received (0 if it does not exist)."""
    admin = admin_client(kafka, "monitoring")
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic, int(p["partition"]))
        for t in described
        if t.get("error_code", 0) == 0
        for p in t.get("partitions", [])
    ]
    bounds = await log_bounds(kafka, partitions)
    return sum(end for _start, end in bounds.values())


# --- stale jobs ----------------------------------------------------------------------------------


def stale_key(job: str) -> str:
    return f"{KEY_PREFIX}stale_job:{job}"


_LOOKBACKS = (
    timedelta(hours=2),
    timedelta(days=2),
    timedelta(days=9),
    timedelta(days=32),
    timedelta(days=367),
)


def previous_slot(schedule: CronSchedule, at: datetime) -> datetime | None:
    """The schedule's last slot at or before ``at`` (None if none within a year).

    Walks forward from a short look-back first, so a minutely job does not iterate over a week.
    """
    for lookback in _LOOKBACKS:
        found = None
        for slot in schedule.slots_after(at - lookback):
            if slot > at:
                break
            found = slot
        if found is not None:
            return found
    return None


def watched_jobs(jobs: Iterable[JobDefinition]) -> list[JobDefinition]:
    """Enabled jobs other than the heartbeat (which cannot report itself missing)."""
    return [job for job in jobs if job.enabled and job.name != HEARTBEAT_JOB]


def stale_jobs(
    jobs: Sequence[JobDefinition],
    last_finished: Mapping[str, datetime],
    *,
    now: datetime,
    tz: ZoneInfo,
    allowance: timedelta,
    since: datetime | None,
) -> CheckResult:
    """Jobs whose schedule's previous due slot has no finished run (by slot) in time.

    A slot is due once its misfire grace and the run allowance have passed. A job that never
    finished counts from ``since`` (when jobs began running here), so a fresh deployment is not
    flooded with alerts for slots from before it existed.
    """
    findings = []
    for job in jobs:
        deadline = timedelta(seconds=job.misfire_grace_s) + allowance
        due = previous_slot(CronSchedule(job.cron, tz), now - deadline)
        last = last_finished.get(job.name, since)
        if due is None or last is None or last >= due:
            continue
        findings.append(
            Finding(
                stale_key(job.name),
                "critical",
                f"Job {job.name} has not run for its slot {due.isoformat()} "
                f"(last finished run: {_when(last_finished.get(job.name))}).",
                {
                    "job": job.name,
                    "cron": job.cron,
                    "due_slot": due.isoformat(),
                    "last_finished_slot": _when(last_finished.get(job.name)),
                },
            )
        )
    return CheckResult(findings, keys=frozenset(stale_key(job.name) for job in jobs))


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "never"


async def last_finished_slots(session: AsyncSession, jobs: Iterable[str]) -> dict[str, datetime]:
    """The slot of each job's latest finished run."""
    rows = await session.execute(
        select(JobRun.job, func.max(JobRun.slot))
        .where(JobRun.job.in_(list(jobs)), JobRun.status == JobRunStatus.FINISHED)
        .group_by(JobRun.job)
    )
    return {job: slot for job, slot in rows}


async def first_run_slot(session: AsyncSession) -> datetime | None:
    """The earliest slot any job ran for: since when jobs run in this deployment."""
    return await session.scalar(select(func.min(JobRun.slot)))


async def probe_check(probe: Probe, key: str) -> CheckResult:
    found = await probe()
    return CheckResult([found] if found else [], keys=frozenset({key}))


async def guarded(name: str, check: Awaitable[CheckResult]) -> CheckResult:
    """A check that raised covers nothing (its incidents stay as they are) and is itself a finding."""
    try:
        return await check
    except Exception as error:
        logger.warning("check %s failed: %s: %s", name, type(error).__name__, describe(error, 200))
        key = f"{KEY_PREFIX}check_failed:{name}"
        return CheckResult(
            [
                Finding(
                    key,
                    "warning",
                    f"The {name} check could not run: {type(error).__name__}: {describe(error, 200)}",
                    {"check": name},
                )
            ]
        )


def merge(results: Iterable[CheckResult], checks: Iterable[str]) -> CheckResult:
    """All findings and coverage; each check's ``check_failed`` key is covered, so it clears once
    the check runs again."""
    results = list(results)
    failures = frozenset(f"{KEY_PREFIX}check_failed:{name}" for name in checks)
    return CheckResult(
        [f for r in results for f in r.findings],
        keys=frozenset().union(*(r.keys for r in results)) | failures,
        prefixes=tuple(p for r in results for p in r.prefixes),
    )


# --- the heartbeat's run -------------------------------------------------------------------------

CHECKS = ("database", "kafka", "lag", "dead_letters", "outbox_parked", "dead_letters_stored", "stale_jobs")


async def run_checks(
    session: AsyncSession,
    kafka: KafkaSettings,
    settings: MonitoringSettings,
    jobs: Sequence[JobDefinition],
    *,
    tz: ZoneInfo,
    slot: datetime,
    now: datetime,
) -> CheckResult:
    """Every check once. Kafka's figures are only read when Kafka answers: a check that cannot run
    covers nothing, so its open incidents neither clear nor multiply."""
    if session.bind is None or not isinstance(session.bind, AsyncEngine):
        raise RuntimeError("the heartbeat needs a session bound to an engine")
    timeout_s = settings.probe_timeout_s
    database = await guarded("database", probe_check(database_probe(session.bind, timeout_s), DATABASE_KEY))
    reached = await guarded("kafka", probe_check(kafka_probe(kafka, timeout_s), KAFKA_KEY))
    results = [database, reached]
    if not reached.findings:
        results.append(await guarded("lag", lag_check(kafka, settings)))
        results.append(await guarded("dead_letters", dead_letter_check(session, kafka, settings, now)))
    parked = parked_outbox_check(session, settings.parked_topic_prefix)
    results.append(await guarded("outbox_parked", parked))
    stored = stored_dead_letter_check(session, settings.stored_dead_letter_handler_prefix)
    results.append(await guarded("dead_letters_stored", stored))
    results.append(await guarded("stale_jobs", stale_job_check(session, jobs, settings, tz=tz, slot=slot)))
    return merge(results, CHECKS)


async def dead_letter_check(
    session: AsyncSession, kafka: KafkaSettings, settings: MonitoringSettings, now: datetime
) -> CheckResult:
    """Compare the topic's end offsets with the previous heartbeat's, and remember them (same transaction)."""
    topic = settings.dead_letter_topic
    current = await topic_end_total(kafka, topic)
    counter = f"dead_letters:{topic}"
    previous = await read_counter(session, counter)
    await write_counter(session, counter, current, now)
    return dead_letter_findings(topic, previous, current, settings)


async def stale_job_check(
    session: AsyncSession,
    jobs: Sequence[JobDefinition],
    settings: MonitoringSettings,
    *,
    tz: ZoneInfo,
    slot: datetime,
) -> CheckResult:
    watched = watched_jobs(jobs)
    last = await last_finished_slots(session, [job.name for job in watched])
    since = await first_run_slot(session)
    return stale_jobs(watched, last, now=slot, tz=tz, allowance=settings.run_allowance, since=since)


def cleared(
    open_keys: Mapping[str, datetime], result: CheckResult, *, now: datetime, quiet_after: timedelta
) -> dict[str, str]:
    """Open incidents (key -> last raised) that cleared, with why: covered by a check that no longer
    finds them, or raised elsewhere and quiet for ``quiet_after``."""
    found = {finding.key for finding in result.findings}
    done = {}
    for key, last_seen in open_keys.items():
        if key in found:
            continue
        if result.covers(key):
            done[key] = "the heartbeat no longer finds it"
        elif not key.startswith(KEY_PREFIX) and now - last_seen >= quiet_after:
            done[key] = f"not raised again for {_span(now - last_seen)}"
    return done


def _span(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:.0f} h" if hours >= 1 else f"{span.total_seconds() / 60:.0f} min"


# --- the daily summary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobTotals:
    job: str
    runs: int
    failed: int
    skipped: int
    max_duration_s: float | None


async def job_totals(session: AsyncSession, since: datetime, until: datetime) -> list[JobTotals]:
    """Per job, its runs for slots in [since, until): how many, failed, skipped, the longest."""
    rows = await session.execute(
        select(
            JobRun.job,
            func.count(),
            func.count().filter(JobRun.status == JobRunStatus.FAILED),
            func.count().filter(JobRun.status == JobRunStatus.SKIPPED),
            func.max(JobRun.duration_s),
        )
        .where(JobRun.slot >= since, JobRun.slot < until)
        .group_by(JobRun.job)
        .order_by(JobRun.job)
    )
    return [JobTotals(job, runs, failed, skipped, longest) for job, runs, failed, skipped, longest in rows]
