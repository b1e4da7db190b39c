"""The job table: every periodic job of the bot, when it fires, and what happens to late or missed slots.

Names follow the seed's ``scheduled_{frequency}_{purpose}``. Cron expressions are local time in
the bot's timezone (``DIANABOT_TIMEZONE``), 5 fields or 6 with seconds last; see
``dianabot_core/schedule/cron.py`` for daylight saving. Settings can switch jobs on and off and
override ``cron``, ``misfire_grace_s``, ``catch_up`` and ``catch_up_window_s`` per job
(``dianabot_core/schedule/settings.py``).

* ``misfire_grace_s``: a slot the scheduler reaches at most this late is still emitted ``on_time``
  (a leader takeover, a slow wake-up); a later one is *missed* and the catch-up policy decides.
* ``catch_up`` for missed slots (downtime, a job re-enabled): ``skip`` them, ``run_once`` (emit
  only the most recent one, as ``catch_up``), or ``run_all`` (every one, oldest first, as
  ``catch_up``) — within ``catch_up_window_s``; older slots are always skipped.
* ``overlap``: the consumer side skips a tick while an earlier run of the job is still running
  (``skip``), or runs it anyway (``allow``). It lives here, with the job, because the consumer
  enforces it (``consumers/jobs.py``), not the scheduler.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from dianabot_core.jobs import Overlap

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


class CatchUp(enum.StrEnum):
    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"


@dataclass(frozen=True)
class JobDefinition:
    name: str
    cron: str
    description: str
    misfire_grace_s: float
    catch_up: CatchUp = CatchUp.RUN_ONCE
    overlap: Overlap = Overlap.SKIP
    catch_up_window_s: float = DAY
    enabled: bool = True

    def with_overrides(self, **overrides: Any) -> JobDefinition:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


JOBS: tuple[JobDefinition, ...] = (
    # --- subscriptions (VIP) ---------------------------------------------------------------------
    JobDefinition(
        "scheduled_hourly_subscription_expiry_reminders",
        "0 * * * *",
        "Send the 7-day and 24-hour expiry reminders that are due (at most one per kind).",
        misfire_grace_s=15 * MINUTE,
    ),
    JobDefinition(
        "scheduled_hourly_subscription_expiry",
        "5 * * * *",
        "Expire ended subscriptions: mark expired, remove from the VIP channel, send the farewell.",
        misfire_grace_s=15 * MINUTE,
    ),
    JobDefinition(
        "scheduled_hourly_subscription_renewal",
        "15 * * * *",
        "Attempt auto-renewals about two days before expiry; notify on failure (48 h grace). Off: "
        "charging belongs to the payment service, which has no contract with this service yet.",
        misfire_grace_s=15 * MINUTE,
        enabled=False,
    ),
    JobDefinition(
        "scheduled_daily_subscription_archive",
        "30 3 * * *",
        "Archive subscriptions expired more than 30 days ago.",
        misfire_grace_s=2 * HOUR,
    ),
    # --- channel content ---------------------------------------------------------------------------
    JobDefinition(
        "scheduled_minutely_post_publishing",
        "* * * * *",
        "Publish due scheduled channel posts and clone recurring ones for their next slot.",
        misfire_grace_s=MINUTE,
        catch_up_window_s=HOUR,
    ),
    JobDefinition(
        "scheduled_minutely_join_request_approval",
        "* * * * *",
        "Approve free-channel join requests older than the waiting time.",
        misfire_grace_s=MINUTE,
        catch_up_window_s=HOUR,
    ),
    JobDefinition(
        "scheduled_daily_join_request_cleanup",
        "45 3 * * *",
        "Delete processed join requests older than 30 days.",
        misfire_grace_s=2 * HOUR,
    ),
    # --- gamification and economy ------------------------------------------------------------------
    JobDefinition(
        "scheduled_daily_mission_assignment",
        "0 9 * * *",
        "Assign the day's missions to active users (09:00 local).",
        misfire_grace_s=HOUR,
    ),
    JobDefinition(
        "scheduled_daily_streak_reset",
        "0 0 * * *",
        "Break daily-gift streaks not claimed within 48 hours (local midnight).",
        misfire_grace_s=HOUR,
    ),
    JobDefinition(
        "scheduled_weekly_mission_reset",
        "0 0 * * 1",
        "Expire last week's weekly missions and assign the new ones (Monday 00:00 local).",
        misfire_grace_s=2 * HOUR,
        catch_up_window_s=7 * DAY,
    ),
    JobDefinition(
        "scheduled_weekly_leaderboard",
        "0 20 * * 0",
        "Compute and announce the weekly leaderboard (Sunday 20:00 local).",
        misfire_grace_s=HOUR,
        catch_up_window_s=DAY,
    ),
    JobDefinition(
        "scheduled_daily_economy_check",
        "0 4 * * *",
        "Check that every balance equals the sum of its transactions; report drift.",
        misfire_grace_s=2 * HOUR,
    ),
    # --- maintenance and monitoring ----------------------------------------------------------------
    JobDefinition(
        "scheduled_daily_cleanup",
        "0 3 * * *",
        "Purge the processed-events and send ledgers, published outbox rows, old job runs, old broadcast "
        "recipients and expired invite links past retention.",
        misfire_grace_s=2 * HOUR,
    ),
    JobDefinition(
        "scheduled_minutely_monitoring_heartbeat",
        "* * * * *",
        "Check consumers and scheduler health (lag, dead letters, stuck runs); alert the admin chat.",
        misfire_grace_s=30,
        # A late heartbeat says nothing about now: missed ones are dropped.
        catch_up=CatchUp.SKIP,
        overlap=Overlap.SKIP,
    ),
    JobDefinition(
        "scheduled_daily_job_summary",
        "0 8 * * *",
        "Send the admin chat yesterday's job runs: failures, skips, durations.",
        misfire_grace_s=2 * HOUR,
    ),
    # --- tests and benchmarks ----------------------------------------------------------------------
    JobDefinition(
        "scheduled_secondly_test_probe",
        "* * * * * *",
        "Fires every second; off unless enabled by settings (tests and bench/scheduler.py).",
        misfire_grace_s=10,
        catch_up=CatchUp.RUN_ALL,
        overlap=Overlap.ALLOW,
        catch_up_window_s=10 * MINUTE,
        enabled=False,
    ),
)

JOBS_BY_NAME: dict[str, JobDefinition] = {job.name: job for job in JOBS}
