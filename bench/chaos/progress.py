"""Watching the consumer groups make progress: committed offsets against end offsets, every second.

Each sample holds, for every partition of every stage-0 group (the handlers' source topics), the
committed offset and the end offset. From the samples:

* an idle window is a span in which a partition had lag and its committed offset did not move;
  the longest one is the figure the suite judges (target: the longest fault + 30 s);
* a fault's recovery is the time from the fault's end until every partition that had lag then
  has moved (or caught up).

Retry groups wait for their records' due time by design, so they are only sampled for the drain
(every fifth sample). Every tenth sample also lists each group's members: a member that is not
one of this run's processes (another ``make run``, a test starting the real service) would take
partitions and write effects elsewhere, so it is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from bench.chaos.cluster import CLIENT_ID
from bench.chaos.readback import ends_of
from bench.chaos.topology import Lane
from dianabot_core.kafka import admin_client
from dianabot_core.lag import offsets_reader
from dianabot_core.settings import KafkaSettings

logger = logging.getLogger("bench.chaos")

Key = tuple[str, str, int]  # group, topic, partition
SAMPLE_TIMEOUT_S = 5.0


@dataclass
class Sample:
    t: float
    positions: dict[Key, tuple[int, int]]  # committed, end


@dataclass
class IdleWindow:
    key: Key
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        group, topic, partition = self.key
        return {
            "group": group,
            "topic": topic,
            "partition": partition,
            "from_s": round(self.start, 1),
            "to_s": round(self.end, 1),
            "idle_s": round(self.seconds, 1),
        }


@dataclass
class Watch:
    """Samples the groups until stopped; `samples` and `retry_lag` feed the report and the drain."""

    settings: KafkaSettings
    lanes: list[Lane]
    origin: float
    samples: list[Sample] = field(default_factory=list)
    retry_lag: int | None = None
    retry_lag_at: float = 0.0
    processes: int = 2
    foreign_members: set[str] = field(default_factory=set)
    # (time, stage-0 groups that every consumer process is a member of)
    membership: list[tuple[float, int]] = field(default_factory=list)
    # (time, client ids of each stage-0 group's members), every tenth sample
    members: list[tuple[float, dict[str, list[str]]]] = field(default_factory=list)
    failed_samples: int = 0
    _admin: AIOKafkaAdminClient | None = None
    _offsets: AIOKafkaConsumer | None = None

    def now(self) -> float:
        return time.monotonic() - self.origin

    async def run(self, stop: asyncio.Event) -> None:
        count = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._sample(count), SAMPLE_TIMEOUT_S)
            except Exception as error:  # Kafka restarting: reconnect for the next sample
                self.failed_samples += 1
                logger.info("lag sample failed: %s", type(error).__name__)
                await self._close()
            count += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, 1.0 - (time.monotonic() - started)))
        await self._close()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._offsets is None:
            admin, offsets = (
                admin_client(self.settings, "chaos-watch"),
                offsets_reader(self.settings, "chaos-watch"),
            )
            await admin.start()
            await offsets.start()
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def _close(self) -> None:
        admin, offsets, self._admin, self._offsets = self._admin, self._offsets, None, None
        with contextlib.suppress(Exception):
            if admin is not None:
                await asyncio.wait_for(admin.close(), 5)
        with contextlib.suppress(Exception):
            if offsets is not None:
                await asyncio.wait_for(offsets.stop(), 5)

    async def _sample(self, count: int) -> None:
        admin, offsets = await self._clients()
        at = self.now()
        stage0 = {(lane.group, lane.topic, lane.partitions) for lane in self.lanes}
        positions = await _positions(admin, offsets, stage0)
        self.samples.append(Sample(at, positions))
        if count % 5 == 0:
            retries = {
                (lane.retry_group, t, lane.partitions) for lane in self.lanes for t in lane.retry_topics
            }
            retry_positions = await _positions(admin, offsets, retries)
            self.retry_lag = sum(max(0, end - committed) for committed, end in retry_positions.values())
            self.retry_lag_at = at
        if count % 10 == 0:
            await self._check_members(admin)

    async def _check_members(self, admin: AIOKafkaAdminClient) -> None:
        full, counts = 0, {}
        for lane in self.lanes:
            clients = set()
            for described in (await admin.describe_consumer_groups([lane.group]))[0].groups:
                for member in described[5]:
                    client_id, host = str(member[1]), str(member[2])
                    clients.add(client_id)
                    if not client_id.startswith(CLIENT_ID):
                        self.foreign_members.add(f"{lane.group}: {client_id}@{host}")
            full += all(f"{CLIENT_ID}-consumer-{i}" in clients for i in range(self.processes))
            counts[lane.group] = sorted(clients)
        self.membership.append((round(self.now(), 1), full))
        self.members.append((self.now(), counts))

    def unserved_s(self, window: IdleWindow) -> float:
        """About how long in the window its group had no member at all (checked every ~10 s)."""
        checks = [len(n.get(window.key[0], [])) for t, n in self.members if window.start <= t <= window.end]
        if not checks:
            return 0.0
        return round(window.seconds * checks.count(0) / len(checks), 1)

    def groups_of(self, client: str) -> list[tuple[float, int]]:
        """(time, how many stage-0 groups `client` is a member of), at each member check."""
        return [(t, sum(client in ids for ids in groups.values())) for t, groups in self.members]

    def source_lag(self) -> int | None:
        if not self.samples:
            return None
        return sum(max(0, end - committed) for committed, end in self.samples[-1].positions.values())

    def lagging(self) -> list[str]:
        """Partitions with lag in the latest sample, for the report of a run that did not drain."""
        if not self.samples:
            return []
        positions = self.samples[-1].positions
        return [f"{g} {t}[{p}]: {e - c}" for (g, t, p), (c, e) in sorted(positions.items()) if e > c]


async def _positions(
    admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, groups: Iterable[tuple[str, str, int]]
) -> dict[Key, tuple[int, int]]:
    wanted = sorted(groups)
    partitions = sorted({TopicPartition(t, p) for _, t, n in wanted for p in range(n)})
    ends = await ends_of(offsets, partitions)
    committed = await asyncio.gather(*(admin.list_consumer_group_offsets(g) for g, _, _ in wanted))
    positions: dict[Key, tuple[int, int]] = {}
    for (group, topic, count), offsets_of in zip(wanted, committed, strict=True):
        for partition in range(count):
            tp = TopicPartition(topic, partition)
            found = offsets_of.get(tp)
            done = int(found.offset) if found is not None and found.offset >= 0 else 0
            positions[(group, topic, partition)] = (done, int(ends[tp]))
    return positions


# --- analysis ------------------------------------------------------------------------------------


def idle_windows(samples: list[Sample]) -> list[IdleWindow]:
    """Every span in which a partition had lag and did not move, longest first."""
    windows: list[IdleWindow] = []
    last: dict[Key, tuple[int, float]] = {}  # committed, time it last moved (or had no lag)
    open_since: dict[Key, float] = {}
    for sample in samples:
        for key, (committed, end) in sample.positions.items():
            previous = last.get(key)
            if previous is not None and committed < previous[0]:
                continue  # a failed read (a Kafka restart lists no offsets), not progress
            if previous is None or committed != previous[0] or end <= committed:
                if key in open_since:
                    windows.append(IdleWindow(key, open_since.pop(key), sample.t))
                last[key] = (committed, sample.t)
            elif key not in open_since:
                open_since[key] = previous[1]
    if samples:
        windows += [IdleWindow(key, since, samples[-1].t) for key, since in open_since.items()]
    return sorted(windows, key=lambda w: -w.seconds)


def recovery_s(samples: list[Sample], fault_end: float) -> float | None:
    """From `fault_end` until every partition lagging then has moved or caught up; None if never."""
    after = [s for s in samples if s.t >= fault_end]
    if not after:
        return None
    first = after[0]
    waiting = {k: c for k, (c, e) in first.positions.items() if e > c}
    for sample in after:
        # Moved means committed past where it was: a lower reading is a failed read, not progress.
        waiting = {k: c for k, c in waiting.items() if k in sample.positions and sample.positions[k][0] <= c}
        if not waiting:
            return round(sample.t - fault_end, 1)
    return None
