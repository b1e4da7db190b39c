"""The chaos suite's fault schedule: each fault's recovery is measured on its own, so a consumer
kill, its restart included, never runs into the PostgreSQL outage or the broker restart."""

from __future__ import annotations

import pytest

from bench.chaos.faults import KILL_DOWN_MAX_S, KILL_START_UP_S, plan


@pytest.mark.parametrize("seed", range(1, 21))
def test_no_kill_or_its_restart_runs_into_an_outage(seed: int) -> None:
    schedule = plan(seed, 300, consumers=2, kills=12, pg_outage_s=30)
    kills = [f for f in schedule if f.kind == "consumer_kill"]
    outages = [f for f in schedule if f.kind in ("postgres_outage", "kafka_restart")]
    assert len(kills) == 12
    assert len(outages) == 2
    for kill in kills:
        assert 1.0 <= kill.down_s <= KILL_DOWN_MAX_S
        back_by = kill.at_s + KILL_DOWN_MAX_S + KILL_START_UP_S
        for outage in outages:
            ends = outage.at_s + outage.down_s
            assert back_by <= outage.at_s or kill.at_s >= ends, (kill, outage)
