"""The monitoring section of the settings tree, ``DIANABOT_MONITORING__...`` (checks: ``monitoring.py``)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from dianabot_core.config import Section

# The consumer groups of this service (``dianabot_core.lag.DEFAULT_PREFIX``; not imported: that needs
# Kafka's client).
LAG_GROUP_PREFIX = "dianabot."


class MonitoringSettings(Section):
    """``DIANABOT_MONITORING__...``: thresholds of the heartbeat's checks, alert reminders, the watchdog."""

    lag_threshold: int = Field(
        1000, ge=1, description="Records a consumer group may be behind before an alert."
    )
    lag_group_thresholds: dict[str, int] = Field(
        {"dianabot.notifications.send.bulk": 50_000},
        description="Per-group thresholds over lag_threshold. A broadcast queues its whole audience on "
        "the bulk lane at once (10,000 recipients are about 7 minutes at 25/s): that backlog is the plan, "
        "not an incident.",
    )
    lag_group_prefix: str = Field(LAG_GROUP_PREFIX, description="Consumer groups whose lag is watched.")

    def lag_threshold_for(self, group: str) -> int:
        return self.lag_group_thresholds.get(group, self.lag_threshold)

    lag_ignored_prefixes: tuple[str, ...] = Field(
        ("dianabot.cli.",),
        description="Groups left out of the lag check (the CLI's dead-letter replay cursor lags by design).",
    )
    dead_letter_topic: str = Field("dianabot.dead_letters", description="The dead-letter topic watched.")
    dead_letter_threshold: int = Field(
        1, ge=1, description="New dead letters between two heartbeats that raise an alert."
    )
    parked_topic_prefix: str = Field(
        "", description="Outbox topics whose parked rows raise an alert (all of them by default)."
    )
    stored_dead_letter_handler_prefix: str = Field(
        "", description="Handlers whose dead letters stored in PostgreSQL raise an alert (all by default)."
    )
    run_allowance: timedelta = Field(
        timedelta(minutes=10),
        description="How long a job's run may take after its slot's misfire grace before it counts as "
        "missing (PT10M).",
    )
    remind_every: timedelta = Field(
        timedelta(hours=1), description="An open incident is re-announced at most this often (PT1H)."
    )
    quiet_resolve_after: timedelta = Field(
        timedelta(days=2),
        description="Incidents raised elsewhere (economy, posts) and not raised again for this long are "
        "closed (P2D): their raisers never say when they clear.",
    )
    probe_timeout_s: float = Field(5.0, gt=0, description="Time limit of each reachability probe.")
    watchdog_interval_s: float = Field(15.0, gt=0, description="How often the in-process watchdog probes.")
    watchdog_failures: int = Field(
        4, ge=1, description="Consecutive failed probes before the watchdog tells the admin chat."
    )
