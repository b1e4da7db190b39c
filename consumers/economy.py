"""The daily economy check: balances against the sum of their transactions, reported, never fixed.

Job ``scheduled_daily_economy_check`` runs one aggregate query (``dianabot_core/domain/economy.py``). When any
balance drifts (differs from its transactions' sum, or is negative) it emits a critical
``alert.raised`` (``economy.drift``) for the admin chat and an ``economy.drift_detected`` with the users
and amounts; a clean economy emits nothing. Balances are never rewritten here: a drift is a bug or a
manual edit that a human must look at.
"""

from __future__ import annotations

import logging

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Services
from dianabot_contracts.events import AlertRaised, EconomyDriftDetected, SchedulerTick
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import TopicSpec
from dianabot_core.domain.economy import DriftReport, find_drifts
from dianabot_core.pipeline.handlers import HandlerContext

logger = logging.getLogger("dianabot.economy")

ALERT_KEY = "economy.drift"
# Users listed in the event (and the alert shows the first few); the count always covers them all.
MAX_REPORTED = 1000
ALERT_SAMPLE = 10


async def scheduled_daily_economy_check(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
    """Find drifted balances; report them as an alert and an event, change nothing."""
    report = await find_drifts(ctx.session, limit=MAX_REPORTED)
    if report.total == 0:
        return {"drifted_balances": 0}
    logger.error("economy drift: %d balances differ from their transactions", report.total)
    cause = ctx.envelope.event_id  # one report per tick: a redelivered tick repeats the same ids
    await ctx.emit(drift_alert(report), event_id=derived_event_id(ALERT_KEY, "alert", cause))
    drifts = {
        d.user_id: {"balance": d.balance, "transactions_sum": d.transactions_sum} for d in report.drifts
    }
    await ctx.emit(
        EconomyDriftDetected(checked_at=ctx.clock.now(), drifts=drifts),
        event_id=derived_event_id(ALERT_KEY, "event", cause),
    )
    return {"drifted_balances": report.total}


def drift_alert(report: DriftReport) -> AlertRaised:
    sample = report.drifts[:ALERT_SAMPLE]
    listed = ", ".join(f"user {d.user_id}: {d.balance} vs {d.transactions_sum}" for d in sample)
    more = f" (+{report.total - len(sample)} more)" if report.total > len(sample) else ""
    return AlertRaised(
        alert_key=ALERT_KEY,
        severity="critical",
        summary=f"{report.total} balances differ from the sum of their transactions: {listed}{more}",
        details={
            "drifted_balances": report.total,
            "drifts": [
                {
                    "user_id": d.user_id,
                    "balance": d.balance,
                    "transactions_sum": d.transactions_sum,
                    "difference": d.difference,
                }
                for d in sample
            ],
        },
    )


def register_jobs(registry: ScheduledJobs, *, ticks: tuple[TopicSpec, ...] = ()) -> None:
    """Register the check; tests pass their own registry and tick topic."""
    registry.scheduled("scheduled_daily_economy_check", timeout_s=600, topics=ticks)(
        scheduled_daily_economy_check
    )


register_jobs(jobs)
