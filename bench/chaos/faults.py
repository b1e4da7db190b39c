"""The fault schedule of a run (from the seed) and its execution against the running cluster.

Faults, by offset from the first publish:

* ``scheduler_leader_kill``: SIGKILL of the replica holding the advisory lock, restarted after a few
  seconds; the takeover (another replica holding the lock) is timed;
* ``postgres_outage``: PostgreSQL crashed (``pg_ctl stop -m immediate``), started again after the
  outage;
* ``kafka_restart``: the broker stopped (``kafka.sh down``) and started (``kafka.sh up``);
* ``consumer_kill`` (``--kills`` of them): SIGKILL of a consumer process, restarted 1-6 s later.

Kills keep clear of the two outages, their process's restart included, so each fault's recovery is
measured on its own. A fault's window runs from its start to the moment its end was reached
(restart issued, server up).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos import cluster as procs
from bench.chaos.cluster import Cluster

logger = logging.getLogger("bench.chaos")

KILL_DOWN_MAX_S = 6.0
# How long a restarted consumers process may take to answer /readyz under the suite's load (the
# run reports each restart's `ready_after_restart_s`).
KILL_START_UP_S = 30.0


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float
    down_s: float
    target: int = 0


@dataclass
class FaultRecord:
    kind: str
    target: str
    started_s: float
    ended_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def plan(
    seed: int,
    duration_s: float,
    *,
    consumers: int,
    kills: int,
    pg_outage_s: float,
    leader_down_s: float = 5.0,
    skip: frozenset[str] = frozenset(),
) -> list[Fault]:
    rng = random.Random(seed * 104_729 + 3)
    leader_at = round(0.12 * duration_s, 1)
    pg_at = round(0.40 * duration_s, 1)
    kafka_at = round(0.72 * duration_s, 1)
    faults = [
        Fault("scheduler_leader_kill", leader_at, leader_down_s),
        Fault("postgres_outage", pg_at, pg_outage_s),
        Fault("kafka_restart", kafka_at, 0.0),
    ]
    # Clear of the other faults and of their recoveries. A kill lasts until its process is back:
    # down up to 6 s, then a start-up that takes up to half a minute on this loaded machine; one
    # issued less than that before an outage ran into it, and the two stalls added up in one window.
    before = KILL_DOWN_MAX_S + KILL_START_UP_S
    busy = [
        (leader_at - 3, leader_at + 10),
        (pg_at - before, pg_at + pg_outage_s + 20),
        (kafka_at - before, kafka_at + 45),
    ]
    for at in _spread(rng, 0.05 * duration_s, 0.97 * duration_s, busy, kills):
        down = round(rng.uniform(1.0, KILL_DOWN_MAX_S), 1)
        faults.append(Fault("consumer_kill", at, down, rng.randrange(consumers)))
    return sorted((f for f in faults if f.kind not in skip), key=lambda f: f.at_s)


def _spread(
    rng: random.Random, start: float, end: float, busy: list[tuple[float, float]], count: int
) -> list[float]:
    """`count` times in [start, end] outside the busy windows, evenly spaced with some jitter."""
    free = _free_windows(start, end, busy)
    total = sum(b - a for a, b in free)
    if count <= 0 or total <= 0:
        return []
    step = total / count
    times = []
    for i in range(count):
        offset = step * (i + 0.5 + rng.uniform(-0.3, 0.3))
        times.append(round(_at_offset(free, offset), 1))
    return times


def _free_windows(start: float, end: float, busy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    free, cursor = [], start
    for a, b in sorted(busy):
        if a > cursor:
            free.append((cursor, min(a, end)))
        cursor = max(cursor, b)
    if cursor < end:
        free.append((cursor, end))
    return [(a, b) for a, b in free if b > a]


def _at_offset(free: list[tuple[float, float]], offset: float) -> float:
    for a, b in free:
        if offset <= b - a:
            return a + offset
        offset -= b - a
    return free[-1][1]


class FaultInjector:
    """Runs a schedule against the cluster; each fault on time, in its own task."""

    def __init__(self, cluster: Cluster, engine: AsyncEngine, lock_key: int, origin: float) -> None:
        self.cluster = cluster
        self.engine = engine
        self.lock_key = lock_key
        self.origin = origin
        self.records: list[FaultRecord] = []

    def now(self) -> float:
        return time.monotonic() - self.origin

    async def run(self, schedule: list[Fault]) -> None:
        tasks = []
        for fault in schedule:
            await asyncio.sleep(max(0.0, fault.at_s - self.now()))
            tasks.append(asyncio.create_task(self._do(fault)))
        await asyncio.gather(*tasks)

    async def _do(self, fault: Fault) -> None:
        actions = {
            "consumer_kill": self._kill_consumer,
            "scheduler_leader_kill": self._kill_leader,
            "postgres_outage": self._postgres_outage,
            "kafka_restart": self._kafka_restart,
        }
        try:
            await actions[fault.kind](fault)
        except Exception as error:  # a fault that could not be done is reported, the run goes on
            logger.exception("fault %s failed", fault.kind)
            self.records.append(FaultRecord(fault.kind, "-", self.now(), None, {"error": repr(error)}))

    async def _kill_consumer(self, fault: Fault) -> None:
        record = FaultRecord(fault.kind, f"consumer-{fault.target}", self.now())
        self.records.append(record)
        self.cluster.kill_consumer(fault.target)
        await asyncio.sleep(fault.down_s)
        self.cluster.restart_consumer(fault.target)
        record.ended_s = self.now()
        record.detail["ready_after_restart_s"] = await self.cluster.consumer_ready(fault.target)

    async def _kill_leader(self, fault: Fault) -> None:
        leader = await procs.scheduler_leader(self.cluster, self.engine, self.lock_key)
        record = FaultRecord(fault.kind, f"scheduler-{leader}", self.now())
        self.records.append(record)
        if leader is None:
            record.detail["error"] = "no leader found"
            return
        self.cluster.kill_scheduler(leader)
        record.detail["takeover_s"] = await self._takeover(leader, record.started_s)
        await asyncio.sleep(max(0.0, record.started_s + fault.down_s - self.now()))
        self.cluster.restart_scheduler(leader)
        record.ended_s = self.now()

    async def _takeover(self, killed: int, since: float, within_s: float = 30.0) -> float | None:
        while self.now() - since < within_s:
            leader = await procs.scheduler_leader(self.cluster, self.engine, self.lock_key)
            if leader is not None and leader != killed:
                return round(self.now() - since, 2)
            await asyncio.sleep(0.1)
        return None

    async def _postgres_outage(self, fault: Fault) -> None:
        record = FaultRecord(fault.kind, "postgresql", self.now())
        self.records.append(record)
        await procs.postgres_crash()
        await asyncio.sleep(max(0.0, record.started_s + fault.down_s - self.now()))
        await procs.postgres_up()
        record.ended_s = self.now()

    async def _kafka_restart(self, fault: Fault) -> None:
        record = FaultRecord(fault.kind, "kafka", self.now())
        self.records.append(record)
        await procs.kafka_down()
        record.detail["down_after_s"] = round(self.now() - record.started_s, 1)
        await procs.kafka_up()
        record.ended_s = self.now()
