"""``@jobs.scheduled``: one tick handler and consumer group per job of the table."""

from __future__ import annotations

import pytest

from consumers import jobs as jobs_module
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.topics import SCHEDULER_TICKS
from dianabot_core.jobs import Overlap
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup


async def probe(tick: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
    return {}


def test_the_cleanup_job_has_its_own_group_on_the_tick_topic() -> None:
    (spec,) = [s for s in jobs_module.handlers.specs if s.action == "scheduled_daily_cleanup"]
    assert spec.name == "dianabot.jobs.scheduled_daily_cleanup"
    assert [t.name for t in spec.topics] == [SCHEDULER_TICKS.name]
    assert spec.event_types == {"scheduler.tick"}


def test_a_job_takes_its_overlap_policy_from_the_table_unless_given() -> None:
    registry = jobs_module.ScheduledJobs(HandlerGroup("jobs"))
    registry.scheduled("scheduled_secondly_test_probe")(probe)
    registry.scheduled("scheduled_daily_cleanup", overlap=Overlap.ALLOW)(probe)
    assert registry.registered["scheduled_secondly_test_probe"].overlap is Overlap.ALLOW
    assert registry.registered["scheduled_daily_cleanup"].overlap is Overlap.ALLOW
    registry.scheduled("scheduled_daily_economy_check")(probe)
    assert registry.registered["scheduled_daily_economy_check"].overlap is Overlap.SKIP


def test_unknown_or_twice_registered_jobs_are_refused() -> None:
    registry = jobs_module.ScheduledJobs(HandlerGroup("jobs"))
    with pytest.raises(ValueError, match="not in the job table"):
        registry.scheduled("scheduled_daily_clenaup")
    registry.scheduled("scheduled_daily_cleanup")(probe)
    with pytest.raises(ValueError, match="already has a handler"):
        registry.scheduled("scheduled_daily_cleanup")
