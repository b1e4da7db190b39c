"""Scheduler replicas as real processes (``faststream run schedulers.app:app``) on real Kafka and PostgreSQL.

The per-second ``scheduled_secondly_test_probe`` job is switched on through settings, with its
own tick topic and lock key per test. What is asserted on the tick topic: every slot of the
observed window is present (contiguous, no gap); each slot carries exactly one event id, the one
derived from (job, slot); copies of a record (outbox at-least-once) may only repeat that same id,
which every consumer's ledger drops; and on the consumer side each slot ran exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import build_consumers
from consumers.jobs import ScheduledJobs
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.topics import TopicSpec
from dianabot_core.jobs import JobRun, JobRunStatus, SchedulerJobState
from dianabot_core.models import OutboxEvent
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from schedulers.state import tick_event_id
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL

ROOT = Path(__file__).resolve().parents[2]
FASTSTREAM = str(Path(sys.executable).with_name("faststream"))
PROBE = "scheduled_secondly_test_probe"
TAKEOVER_LIMIT_S = 10.0
Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Tick:
    slot: datetime
    kind: str
    event_id: uuid.UUID
    published_at: float  # the Kafka record's timestamp, epoch seconds


@dataclass
class TickReader:
    """Reads the test's tick topic from the start, in the background."""

    settings: Settings
    topic: str
    ticks: list[Tick] = field(default_factory=list)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        envelope = json.loads(record.value or b"{}")
                        tick = SchedulerTick.model_validate(envelope["payload"])
                        if tick.job == PROBE:
                            event_id = uuid.UUID(envelope["event_id"])
                            self.ticks.append(Tick(tick.slot, tick.kind, event_id, record.timestamp / 1000))
        finally:
            await consumer.stop()

    def after(self, moment: float) -> list[Tick]:
        return [t for t in self.ticks if t.published_at > moment]

    async def wait_for(self, count: int, after: float = 0.0, within: float = 20) -> None:
        """Until ``count`` ticks were published after ``after`` (epoch seconds)."""
        deadline = time.monotonic() + within
        while len(self.after(after)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} ticks; ticks: {len(self.ticks)}")
            await asyncio.sleep(0.05)


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with suppress(ValueError):
                found.append(json.loads(line))
        return found

    def led_at(self) -> float | None:
        """When this replica last logged that it took the lead (epoch seconds)."""
        times = [
            datetime.fromisoformat(str(line["ts"])).timestamp()
            for line in self.lines()
            if str(line.get("msg", "")).startswith("scheduler is leading")
        ]
        return max(times, default=None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def scheduler_env(topic: str, lock_key: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN="123456:scheduler-test",
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_TELEMETRY__LOG_LEVEL="INFO",
        DIANABOT_TELEMETRY__LOG_JSON="true",
        DIANABOT_SCHEDULER__ENABLED_JOBS=PROBE,
        DIANABOT_SCHEDULER__TICK_TOPIC=topic,
        DIANABOT_SCHEDULER__LOCK_KEY=str(lock_key),
        DIANABOT_SCHEDULER__HTTP_PORT="0",  # three replicas on one machine
    )
    env.update(overrides)
    return env


@dataclass
class Cluster:
    tmp_path: Path
    topic: str
    lock_key: int
    replicas: list[Replica] = field(default_factory=list)

    def start(self, name: str, **overrides: str) -> Replica:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as stderr:  # the child keeps its own handle
            process = subprocess.Popen(
                [FASTSTREAM, "run", "schedulers.app:app"],
                cwd=ROOT,
                env=scheduler_env(self.topic, self.lock_key, **overrides),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        replica = Replica(name, process, log)
        self.replicas.append(replica)
        return replica

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.poll() is None]

    def leaders(self) -> list[Replica]:
        return [r for r in self.alive() if r.led_at() is not None]

    async def wait_for_leader(self, since: float, within: float = 30) -> tuple[Replica, float]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for replica in self.alive():
                led_at = replica.led_at()
                if led_at is not None and led_at >= since:
                    return replica, led_at
            await asyncio.sleep(0.05)
        logs = "\n".join(f"--- {r.name}\n{r.log.read_text(errors='replace')[-3000:]}" for r in self.replicas)
        raise AssertionError(f"no replica took the lead within {within}s\n{logs}")

    def stop_all(self) -> None:
        for replica in self.replicas:
            with suppress(Exception):
                replica.stop()


@asynccontextmanager
async def cluster_and_reader(
    tmp_path: Path, settings: Settings, admin: AIOKafkaAdminClient, sessions: Sessions
) -> AsyncIterator[tuple[Cluster, TickReader]]:
    topic = f"test.scheduler.{uuid.uuid4().hex[:10]}"
    await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    async with sessions() as session:  # a fresh start for the probe job
        await session.execute(delete(SchedulerJobState).where(SchedulerJobState.job == PROBE))
        await session.commit()
    cluster = Cluster(tmp_path, topic, lock_key=int.from_bytes(os.urandom(6), "big"))
    reader = TickReader(settings, topic)
    reading = asyncio.create_task(reader.run())
    try:
        yield cluster, reader
    finally:
        cluster.stop_all()
        reading.cancel()
        with suppress(asyncio.CancelledError):
            await reading


@asynccontextmanager
async def probe_consumer(settings: Settings, topic: str) -> AsyncIterator[None]:
    """The consumer side: a handler for the probe job, recording each run in job_runs."""
    registry = ScheduledJobs(HandlerGroup(f"jobs{uuid.uuid4().hex[:8]}"))

    @registry.scheduled(PROBE, topics=(TopicSpec(name=topic, partitions=3, key="job:{job}"),))
    async def probe(tick: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        return {"probed": 1}

    consumers = build_consumers(settings, groups=[registry.group])
    await consumers.declare_topics()
    try:
        async with consumers.broker:
            await consumers.broker.start()
            yield
    finally:
        await consumers.resources.engine.dispose()


def assert_each_slot_once(ticks: list[Tick]) -> dict[str, int]:
    """Contiguous slots, one derived event id per slot; returns counts for the report."""
    ids_by_slot: dict[datetime, set[uuid.UUID]] = defaultdict(set)
    for tick in ticks:
        ids_by_slot[tick.slot].add(tick.event_id)
    slots = sorted(ids_by_slot)
    expected = [slots[0] + timedelta(seconds=i) for i in range(len(slots))]
    assert slots == expected, f"gaps in the slots: {sorted(set(expected) - set(slots))[:10]}"
    assert all(ids == {tick_event_id(PROBE, slot)} for slot, ids in ids_by_slot.items())
    return {"slots": len(slots), "records": len(ticks), "same_id_copies": len(ticks) - len(slots)}


async def test_three_replicas_leader_killed_standby_takes_over_and_every_slot_runs_once(
    kafka: Settings,
    admin: AIOKafkaAdminClient,
    session_factory: Sessions,
    tmp_path: Path,
) -> None:
    async with (
        cluster_and_reader(tmp_path, kafka, admin, session_factory) as (cluster, reader),
        probe_consumer(kafka, cluster.topic),
    ):
        started = time.time()
        for name in ("a", "b", "c"):
            cluster.start(name)
        leader, _ = await cluster.wait_for_leader(started)
        await reader.wait_for(4)
        assert cluster.leaders() == [leader], "more than one replica took the lead"

        takeovers = []
        rng = random.Random(cluster.lock_key)
        for _ in range(2):  # kill the leader, then the leader that took over
            await asyncio.sleep(rng.uniform(0, 1))  # anywhere in the second, mid-emission included
            killed_at = time.time()
            leader.stop(signal.SIGKILL)
            leader, led_at = await cluster.wait_for_leader(killed_at, within=TAKEOVER_LIMIT_S + 5)
            await reader.wait_for(5, after=killed_at)
            first_tick = min(t.published_at for t in reader.after(killed_at))
            takeovers.append((round(led_at - killed_at, 3), round(first_tick - killed_at, 3)))
        stopped_at = time.time()
        leader.stop()
        await asyncio.sleep(1)  # anything still in flight lands now
        observed = [t for t in reader.ticks if t.published_at <= stopped_at + 1]
        counts = assert_each_slot_once(observed)
        expected_ids = {t.event_id for t in observed}
        runs = await wait_for_finished_runs(session_factory, expected_ids)

    print(f"scheduler takeover (lead s, first tick s): {takeovers}; {counts}")
    for lead_s, first_tick_s in takeovers:
        assert lead_s <= TAKEOVER_LIMIT_S
        assert first_tick_s <= TAKEOVER_LIMIT_S
    assert {t.kind for t in observed} == {"on_time"}  # takeover stays within the 10 s misfire grace
    assert len(runs) == counts["slots"]
    assert all(run.status is JobRunStatus.FINISHED and run.counts == {"probed": 1} for run in runs)
    async with session_factory() as session:
        outbox_ids = set(
            await session.scalars(select(OutboxEvent.event_id).where(OutboxEvent.event_id.in_(expected_ids)))
        )
    assert outbox_ids == expected_ids  # one outbox row per slot, whoever emitted it


async def wait_for_finished_runs(
    sessions: Sessions, event_ids: set[uuid.UUID], within: float = 30
) -> list[JobRun]:
    deadline = time.monotonic() + within
    while True:
        async with sessions() as session:
            runs = list(await session.scalars(select(JobRun).where(JobRun.event_id.in_(event_ids))))
        if len(runs) >= len(event_ids) and all(r.status is not JobRunStatus.STARTED for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(runs)} of {len(event_ids)} ticks were handled")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("policy", "catch_up_ticks"),
    [("run_once", lambda missed: 1), ("run_all", lambda missed: missed)],
    ids=["run_once", "run_all"],
)
async def test_a_restart_after_downtime_applies_the_catch_up_policy(
    kafka: Settings,
    admin: AIOKafkaAdminClient,
    session_factory: Sessions,
    tmp_path: Path,
    policy: str,
    catch_up_ticks: Callable[[int], int],
) -> None:
    overrides = {
        f"DIANABOT_SCHEDULER__JOBS__{PROBE.upper()}__MISFIRE_GRACE_S": "1",
        f"DIANABOT_SCHEDULER__JOBS__{PROBE.upper()}__CATCH_UP": policy,
    }
    async with cluster_and_reader(tmp_path, kafka, admin, session_factory) as (cluster, reader):
        first = cluster.start("before", **overrides)
        await cluster.wait_for_leader(time.time() - 60)
        await reader.wait_for(3)
        first.stop()
        stopped_at = time.time()
        await asyncio.sleep(4)  # downtime: about four slots come and go
        cluster.start("after", **overrides)
        await reader.wait_for(3, after=stopped_at + 4)
        cluster.stop_all()
        await asyncio.sleep(0.5)

    before = sorted((t for t in reader.ticks if t.published_at <= stopped_at), key=lambda t: t.slot)
    after = sorted((t for t in reader.ticks if t.published_at > stopped_at), key=lambda t: t.slot)
    catch_up = [t for t in after if t.kind == "catch_up"]
    on_time = [t for t in after if t.kind == "on_time"]
    missed = int((on_time[0].slot - before[-1].slot).total_seconds()) - 1
    print(f"restart with {policy}: {missed} missed slots, catch-up ticks {[t.slot.time() for t in catch_up]}")
    assert {t.kind for t in before} == {"on_time"}
    assert missed >= 2
    assert len(catch_up) == catch_up_ticks(missed)
    # The catch-up ticks are the most recent missed slots, right before the first on-time one.
    assert [t.slot for t in catch_up] == [
        on_time[0].slot - timedelta(seconds=n) for n in range(len(catch_up), 0, -1)
    ]
    assert_each_slot_once(on_time)
    assert len({t.event_id for t in reader.ticks}) == len({t.slot for t in reader.ticks})
