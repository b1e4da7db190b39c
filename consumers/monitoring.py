"""Monitoring: the heartbeat, alerts in the admin chat, the daily job summary, and the DB-down watchdog.

Jobs (scheduler ticks; ``consumers/jobs.py`` records their runs):

* ``scheduled_minutely_monitoring_heartbeat`` — runs the checks of ``dianabot_core/monitoring.py`` (consumer
  lag, dead-letter growth, parked outbox rows and dead letters kept in PostgreSQL because Kafka would
  not take them, jobs that missed their schedule, PostgreSQL and Kafka reachability) and
  emits one ``alert.raised`` per finding and one ``alert.resolved`` per open incident that cleared;
* ``scheduled_daily_job_summary`` — one admin-chat message with the last 24 h of job runs per job
  (runs, failures, skips, longest) and the open incidents.

Handler (consumer group ``dianabot.monitoring.notify_admin``): every ``alert.raised`` and
``alert.resolved`` — the heartbeat's and everyone else's (economy drift, failed posts) — keeps its
incident in ``alert_incidents`` (``dianabot_core/incidents.py``) and tells the admin chat once per incident,
again at most once per remind interval while it stays open (or at once when it turns critical), and
once when it clears. Critical priority; send keys derived from the incident, so a redelivery never
sends twice. One handler for both event types keeps a key's raise and resolve in topic order.

**When PostgreSQL or Kafka is down** nothing above can run: ticks, the ledger, the outbox and the send
ledger all need both. So each consumer process also runs a small ``Watchdog`` (``dianabot_core/watchdog.py``)
that probes both every few seconds and, after several failures in a row, sends the admin chat one
message straight through the bot (``TelegramSender.send_unrecorded``: no ledger, no shared limits),
and one recovery message when the probe passes again. Its state is in memory, so every consumer
process sends its own pair (each names itself), and a restart mid-outage announces it again: for an
outage, a few duplicates beat silence.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Monitoring, Services
from dianabot_contracts.events import AlertRaised, AlertResolved, MessageContent, Priority, SchedulerTick
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import ALERTS, TopicSpec
from dianabot_core import metrics
from dianabot_core.incidents import AlertIncident, Notice, open_incidents, record_raised, record_resolved
from dianabot_core.monitoring import HEARTBEAT_JOB, JobTotals, cleared, job_totals, run_checks
from dianabot_core.pipeline.handlers import DEFAULT_RETRY_DELAYS_S, HandlerContext, HandlerGroup
from dianabot_core.schedule.jobs import JobDefinition
from dianabot_core.telegram.sender import SendRequest, TelegramSender
from dianabot_core.watchdog import Watchdog, database_probe, kafka_probe

logger = logging.getLogger("dianabot.monitoring")

SUMMARY_JOB = "scheduled_daily_job_summary"
DAY = timedelta(days=1)
# Telegram's limit is 4096 characters; lists are cut well before it.
MAX_TEXT = 3800
MAX_LISTED_INCIDENTS = 20


def handled_jobs(table: Iterable[JobDefinition], registry: ScheduledJobs = jobs) -> tuple[JobDefinition, ...]:
    """The jobs of ``table`` that have a handler: a tick nobody handles leaves no run to judge."""
    return tuple(job for job in table if job.name in registry.registered)


# --- jobs ----------------------------------------------------------------------------------------


async def scheduled_minutely_monitoring_heartbeat(
    tick: SchedulerTick, ctx: HandlerContext[Services], *, alerts: TopicSpec = ALERTS
) -> dict[str, int]:
    """Run the checks; raise an alert per finding, resolve each open incident that cleared."""
    monitoring = ctx.services.monitoring
    now = ctx.clock.now()
    result = await run_checks(
        ctx.session,
        monitoring.kafka,
        monitoring.settings,
        monitoring.jobs,
        tz=monitoring.timezone,
        slot=tick.slot,
        now=now,
    )
    incidents = await open_incidents(ctx.session)
    done = cleared(
        {i.alert_key: i.last_seen_at for i in incidents},
        result,
        now=now,
        quiet_after=monitoring.settings.quiet_resolve_after,
    )
    cause = ctx.envelope.event_id  # a redelivered tick repeats the same ids
    for finding in result.findings:
        raised = AlertRaised(
            alert_key=finding.key, severity=finding.severity, summary=finding.summary, details=finding.details
        )
        await _emit(ctx, raised, derived_event_id("alert.raised", finding.key, cause), alerts)
    for key, why in done.items():
        resolved = AlertResolved(alert_key=key, summary=f"Cleared: {why}.")
        await _emit(ctx, resolved, derived_event_id("alert.resolved", key, cause), alerts)
    still_open = ({i.alert_key for i in incidents} - done.keys()) | {f.key for f in result.findings}
    metrics.OPEN_INCIDENTS.set(len(still_open))
    metrics.LAST_HEARTBEAT.set(now.timestamp())
    if result.findings or done:
        logger.warning("heartbeat: %d findings, %d cleared", len(result.findings), len(done))
    return {"findings": len(result.findings), "resolved": len(done)}


async def scheduled_daily_job_summary(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
    """Tell the admin chat how the jobs did over the 24 h of slots before this one, and what is open."""
    monitoring = ctx.services.monitoring
    totals = await job_totals(ctx.session, tick.slot - DAY, tick.slot)
    incidents = await open_incidents(ctx.session)
    text = summary_text(totals, incidents, tick.slot - DAY, monitoring.timezone)
    await _tell_admin(ctx, monitoring, f"job_summary:{ctx.envelope.event_id}", text)
    return {
        "jobs": len(totals),
        "failed_runs": sum(t.failed for t in totals),
        "open_incidents": len(incidents),
    }


async def _emit(
    ctx: HandlerContext[Services], payload: AlertRaised | AlertResolved, event_id: Any, topic: TopicSpec
) -> None:
    await ctx.emit(payload, event_id=event_id, topic=topic)


def register_jobs(
    registry: ScheduledJobs, *, alerts: TopicSpec = ALERTS, ticks: tuple[TopicSpec, ...] = ()
) -> None:
    """Register the heartbeat and the summary; tests pass their own registry, alert and tick topics."""
    registry.scheduled(HEARTBEAT_JOB, timeout_s=50, topics=ticks)(
        partial(scheduled_minutely_monitoring_heartbeat, alerts=alerts)
    )
    registry.scheduled(SUMMARY_JOB, timeout_s=120, topics=ticks)(scheduled_daily_job_summary)


# --- the handler ---------------------------------------------------------------------------------


async def monitoring_notify_admin_task(
    event: AlertRaised | AlertResolved, ctx: HandlerContext[Services]
) -> None:
    """Open, update or close the alert's incident; tell the admin chat when a notice is due."""
    monitoring = ctx.services.monitoring
    if isinstance(event, AlertRaised):
        notice = await record_raised(
            ctx.session,
            alert_key=event.alert_key,
            severity=event.severity,
            summary=event.summary,
            details=event.details,
            raised_at=ctx.envelope.occurred_at,
            now=ctx.clock.now(),
            remind_every=monitoring.settings.remind_every,
        )
    else:
        notice = await record_resolved(ctx.session, alert_key=event.alert_key, now=ctx.clock.now())
    if notice is None:
        logger.info("alert %s: incident updated, no message due", event.alert_key)
        return
    resolution = event.summary if isinstance(event, AlertResolved) else None
    await _tell_admin(ctx, monitoring, notice.send_key, notice_text(notice, resolution))


async def _tell_admin(ctx: HandlerContext[Services], monitoring: Monitoring, key: str, text: str) -> None:
    request = SendRequest(
        key=key,
        chat_id=monitoring.admin_chat_id,
        content=MessageContent(text=text[:MAX_TEXT]),
        priority=Priority.CRITICAL,
    )
    result = await ctx.services.sender.send(request)
    logger.info("admin chat %s: %s", key, result.outcome.value)


def build_handlers(
    *,
    module: str = "monitoring",
    topic: TopicSpec = ALERTS,
    retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S,
) -> HandlerGroup:
    """The alert handler; tests pass their own module (hence consumer group) and topic."""
    group = HandlerGroup(module)
    events: tuple[type[AlertRaised | AlertResolved], ...] = (AlertRaised, AlertResolved)
    group.handler(*events, action="notify_admin", retry_delays_s=retry_delays_s, topics=(topic,))(
        monitoring_notify_admin_task
    )
    return group


# --- texts ---------------------------------------------------------------------------------------

_HEADINGS = {
    "opened": "{icon} {severity}: new incident",
    "reminder": "{icon} {severity}: still open (reminder {reminder})",
    "escalated": "{icon} {severity}: now critical",
}
_ICONS = {"critical": "🔴", "warning": "🟠"}


def notice_text(notice: Notice, resolution: str | None = None) -> str:
    incident = notice.incident
    since = f"open since {incident.opened_at:%Y-%m-%d %H:%M} UTC"
    if notice.kind == "resolved":
        duration = _duration((incident.resolved_at or incident.opened_at) - incident.opened_at)
        told = [f"✅ Resolved: {incident.alert_key}", resolution, f"Was: {incident.summary}"]
        return "\n".join(line for line in told if line) + f"\n({since}, {duration})"
    heading = _HEADINGS[notice.kind].format(
        icon=_ICONS.get(incident.severity, "🟠"),
        severity=incident.severity.upper(),
        reminder=incident.notify_count - 1,
    )
    lines = [heading, incident.summary]
    if incident.details:
        lines += ["", *(f"{k}: {v}" for k, v in list(incident.details.items())[:8])]
    return "\n".join([*lines, f"key: {incident.alert_key}, {since}"])


def summary_text(
    totals: Sequence[JobTotals], incidents: Sequence[AlertIncident], since: Any, tz: ZoneInfo
) -> str:
    lines = [f"📋 Jobs since {since.astimezone(tz):%Y-%m-%d %H:%M %Z} (24 h)"]
    if not totals:
        lines.append("No job ran.")
    for t in totals:
        longest = f"{t.max_duration_s:.1f} s" if t.max_duration_s is not None else "-"
        flag = "❌ " if t.failed else ""
        lines.append(
            f"{flag}{t.job}: {t.runs} runs, {t.failed} failed, {t.skipped} skipped, longest {longest}"
        )
    failed = sum(t.failed for t in totals)
    lines.append(f"Runs: {sum(t.runs for t in totals)}, failures: {failed}.")
    lines.append(f"\nOpen incidents: {len(incidents)}")
    for incident in incidents[:MAX_LISTED_INCIDENTS]:
        lines.append(
            f"• [{incident.severity}] {incident.alert_key} since {incident.opened_at:%Y-%m-%d %H:%M} UTC"
        )
    if len(incidents) > MAX_LISTED_INCIDENTS:
        lines.append(f"… and {len(incidents) - MAX_LISTED_INCIDENTS} more")
    return "\n".join(lines)


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


# --- the watchdog --------------------------------------------------------------------------------


def build_watchdog(engine: AsyncEngine, monitoring: Monitoring, sender: TelegramSender) -> Watchdog:
    """The process's watchdog on its own engine and Kafka settings, telling the admin chat directly."""
    settings = monitoring.settings

    async def notify(text: str) -> None:
        await sender.send_unrecorded(monitoring.admin_chat_id, text)

    return Watchdog(
        {
            "PostgreSQL": database_probe(engine, settings.probe_timeout_s),
            "Kafka": kafka_probe(monitoring.kafka, settings.probe_timeout_s),
        },
        notify,
        interval_s=settings.watchdog_interval_s,
        failures=settings.watchdog_failures,
        origin=f"{socket.gethostname()}:{os.getpid()}",
    )


handlers = build_handlers()
register_jobs(jobs)
