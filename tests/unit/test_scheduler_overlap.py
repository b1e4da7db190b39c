"""The overlap policy's decision: which earlier run, if any, blocks a tick (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from dianabot_core.jobs import JobRunStatus, RunView, blocking_run

SLOT = datetime(2026, 5, 4, 10, 1, tzinfo=UTC)
STALE = timedelta(minutes=10)


def run(
    status: JobRunStatus, started: float, finished: float | None = None, slot: datetime | None = None
) -> RunView:
    """A run that started/finished `started`/`finished` seconds after SLOT (negative: before)."""
    return RunView(
        event_id=uuid.uuid4(),
        slot=slot or SLOT - timedelta(minutes=1),
        status=status,
        started_at=SLOT + timedelta(seconds=started),
        finished_at=None if finished is None else SLOT + timedelta(seconds=finished),
    )


def test_a_run_still_going_blocks_the_next_slot() -> None:
    running = run(JobRunStatus.STARTED, started=-50)
    assert blocking_run([running], SLOT, now=SLOT + timedelta(seconds=1), stale_after=STALE) == running


def test_a_run_that_ended_before_the_slot_blocks_nothing() -> None:
    done = run(JobRunStatus.FINISHED, started=-50, finished=-10)
    failed = run(JobRunStatus.FAILED, started=-50, finished=-5)
    assert blocking_run([done, failed], SLOT, now=SLOT, stale_after=STALE) is None


def test_ticks_queued_behind_a_long_run_are_skipped_too() -> None:
    # The run of 10:00 took 150 s; the ticks of 10:01 and 10:02 were handled after it ended.
    long_run = run(JobRunStatus.FINISHED, started=-60, finished=90)
    assert blocking_run([long_run], SLOT, now=SLOT + timedelta(seconds=91), stale_after=STALE) == long_run
    next_slot = SLOT + timedelta(minutes=1)
    assert (
        blocking_run([long_run], next_slot, now=next_slot + timedelta(seconds=1), stale_after=STALE)
        == long_run
    )
    after = SLOT + timedelta(minutes=2)
    assert blocking_run([long_run], after, now=after, stale_after=STALE) is None


def test_a_run_that_started_after_the_slot_does_not_block_it() -> None:
    # A catch-up run that began after this slot was due is not an *earlier* run.
    later = run(JobRunStatus.STARTED, started=30)
    assert blocking_run([later], SLOT, now=SLOT + timedelta(seconds=31), stale_after=STALE) is None


def test_a_stale_started_run_is_presumed_dead() -> None:
    crashed = run(JobRunStatus.STARTED, started=-700)
    assert blocking_run([crashed], SLOT, now=SLOT, stale_after=STALE) is None


def test_skipped_runs_never_block() -> None:
    skipped = run(JobRunStatus.SKIPPED, started=-50, finished=50)
    assert blocking_run([skipped], SLOT, now=SLOT, stale_after=STALE) is None
