"""The scheduler's settings: ``DIANABOT_SCHEDULER__...``, the ``scheduler`` section of the settings tree
(environment and ``.env``), read once at start-up with the root ``Settings``.

Examples::

    DIANABOT_SCHEDULER__DISABLED_JOBS=scheduled_weekly_leaderboard,scheduled_daily_job_summary
    DIANABOT_SCHEDULER__ENABLED_JOBS=scheduled_secondly_test_probe        # exactly these jobs run
    DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON="30 4 * * *"
    DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CATCH_UP=skip
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from dianabot_contracts.topics import SCHEDULER_TICKS
from dianabot_core.config import Section
from dianabot_core.schedule.cron import is_valid_cron
from dianabot_core.schedule.jobs import JOBS, JOBS_BY_NAME, CatchUp, JobDefinition

# The advisory lock that elects the emitting replica (b"schedulr" read as an integer).
SCHEDULER_LOCK_KEY = int.from_bytes(b"schedulr", "big")


class JobOverride(Section):
    """Per-job overrides of the job table; unset fields keep the table's value."""

    enabled: bool | None = Field(None, description="Switch the job on or off.")
    cron: str | None = Field(None, description="Cron expression in the bot's timezone.")
    misfire_grace_s: float | None = Field(None, ge=0, description="Lateness still counted as on time.")
    catch_up: CatchUp | None = Field(None, description="skip, run_once or run_all for missed slots.")
    catch_up_window_s: float | None = Field(
        None, gt=0, description="Missed slots older than this are always skipped."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_cron(value):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return value


def _names(value: Any) -> Any:
    """Job lists are comma-separated in the environment (a JSON list works too)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return value
        return frozenset(name.strip() for name in text.split(",") if name.strip())
    return value


JobNames = Annotated[frozenset[str], NoDecode]


class SchedulerSettings(Section):
    """How the scheduler replicas elect a leader and which jobs they emit ticks for."""

    enabled_jobs: JobNames | None = Field(
        None, description="If set, exactly these jobs run (the table's enabled flags are ignored)."
    )
    disabled_jobs: JobNames = Field(frozenset(), description="Jobs switched off.")
    jobs: dict[str, JobOverride] = Field(default_factory=dict, description="Per-job overrides, by job name.")
    lock_key: int = Field(SCHEDULER_LOCK_KEY, description="PostgreSQL advisory lock key electing the leader.")
    tick_topic: str = Field(SCHEDULER_TICKS.name, description="Topic the ticks are published to.")
    http_port: int = Field(
        9465, ge=0, le=65535, description="Port of the scheduler's /livez, /readyz and /metrics; 0: off."
    )
    standby_retry_s: float = Field(1.0, gt=0, le=2, description="How often a standby tries to take the lead.")
    lock_check_interval_s: float = Field(
        1.0, gt=0, le=5, description="How often the leader checks its lock connection is alive."
    )
    lock_session_timeout_s: float = Field(
        6.0,
        ge=2,
        description="The server ends a lock connection silent this long (a hung or cut-off leader), "
        "releasing the lock; the leader pings every lock_check_interval_s.",
    )
    max_catch_up_runs: int = Field(
        1000, ge=1, description="At most this many catch-up ticks per job at once (run_all)."
    )
    relay_poll_interval_s: float = Field(
        0.5, gt=0, description="How often the leader's tick relay looks for unpublished ticks when idle."
    )

    _split_enabled = field_validator("enabled_jobs", "disabled_jobs", mode="before")(_names)

    @field_validator("jobs", mode="before")
    @classmethod
    def _lowercase_names(cls, value: Any) -> Any:
        return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _known_jobs(self) -> SchedulerSettings:
        named = set(self.enabled_jobs or ()) | set(self.disabled_jobs) | set(self.jobs)
        unknown = sorted(named - set(JOBS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown jobs {', '.join(unknown)}; known: {', '.join(JOBS_BY_NAME)}")
        return self

    def resolve_jobs(self) -> list[JobDefinition]:
        """The job table with these settings applied (enabled flags and overrides), in table order."""
        resolved = []
        for job in JOBS:
            override = self.jobs.get(job.name, JobOverride())
            enabled = job.enabled if self.enabled_jobs is None else job.name in self.enabled_jobs
            if override.enabled is not None:
                enabled = override.enabled
            enabled = enabled and job.name not in self.disabled_jobs
            resolved.append(job.with_overrides(**override.model_dump(exclude={"enabled"}), enabled=enabled))
        return resolved
