"""``user.activity`` traffic for the scale-out and soak benchmarks, and the checks made after it.

Shared by ``bench/scaleout.py`` and ``bench/soak.py``; the processes, database and consumer groups
are the chaos harness's (``bench/chaos``).

* Events are derived from their index: event id, user and activity time. Event ids carry a
  per-run prefix and the index in their low bits, so PostgreSQL can list every id a run
  published (``generate_series``) without this process keeping a million of them.
* Activity times are scattered over a day, so one user's events arrive out of time order and
  ``last_active_at`` only comes out right if the handler keeps the latest.
* A share of events is published a second time with the same id (a producer's retry): the
  ledger must hold one row for it.
* Lost = published ids without a ledger row of the activity handler; duplicated = ids with more
  than one row (the ledger's key (consumer, event_id) forbids that; counting says so if it ever
  changes); unexpected = rows for ids the run never published; and each user's
  ``last_active_at`` must equal the latest ``at`` published for them. An effect applied twice is
  not visible here (moving a time forward to the same value twice changes nothing): what the
  checks show is that every event was handled and claimed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos import database, groups
from bench.chaos.cluster import REPO
from bench.chaos.topology import Lane, service_lanes
from bench.chaos.workload import Fixtures, Record, envelope_record
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import USERS
from dianabot_core.kafka import admin_client
from dianabot_core.settings import KafkaSettings

PRODUCER = "bench-scale"
FIRST_USER = 70_000_000
BASE = datetime(2031, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
# Low 64 bits of an event id: the RFC 4122 variant bits ("8"), then the index in 15 hex digits.
VARIANT_HEX = "8"


DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_DATABASE = "postgresql+asyncpg://dianabot:dianabot@127.0.0.1:5432/dianabot"


def add_service_arguments(parser: argparse.ArgumentParser, *, database: str, processes: str) -> None:
    """The arguments every run of the real consumers process takes: where Kafka and PostgreSQL are,
    the run's own database, which source to run and its log level."""
    parser.add_argument("--kafka", default=os.environ.get("DIANABOT_KAFKA__BOOTSTRAP_SERVERS", DEFAULT_KAFKA))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DIANABOT_DATABASE__URL", DEFAULT_DATABASE),
        help="any database on the server: the run's own is dropped and created beside it",
    )
    parser.add_argument("--database", default=database, help="dropped and created for each run")
    parser.add_argument("--source", choices=("head", "worktree"), default="head")
    parser.add_argument("--log-level", default="WARNING", help=f"the service {processes}' log level")


def activity_lane(lanes: Iterable[Lane] | None = None) -> Lane:
    """The stage-0 lane of the handler that takes ``user.activity`` on ``dianabot.users``."""
    found = [
        lane
        for lane in (service_lanes() if lanes is None else lanes)
        if lane.topic == USERS.name and UserActivity.event_type in lane.event_types
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one handler of user.activity on {USERS.name}, found {len(found)}")
    return found[0]


def handler_kind(source: Path, handler: str) -> str:
    """``batch`` or ``per-event``, as the service tree that runs declares the handler."""
    probe = (
        "import sys\nfrom consumers.registry import HANDLER_GROUPS\n"
        "print(next(s.batch for g in HANDLER_GROUPS for s in g.specs if s.name == sys.argv[1]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, handler],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return "batch" if found == "True" else "per-event"


@dataclass(frozen=True)
class ActivityPlan:
    """Which event index ``i`` is: its id, user and activity time (nothing random is stored)."""

    users: int
    run_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def user_ids(self) -> list[int]:
        return list(range(FIRST_USER, FIRST_USER + self.users))

    @property
    def id_prefix(self) -> str:
        """The high 64 bits of every id of the run, hex: a UUIDv7 time (the run's start) and version."""
        return f"{(self.run_ms << 16) | (0x7 << 12):016x}"

    def event_id(self, index: int) -> UUID:
        return UUID(f"{self.id_prefix}{VARIANT_HEX}{index:015x}")

    def user_of(self, index: int) -> int:
        # Knuth's multiplicative hash: neighbouring indices go to unrelated users (and partitions).
        return FIRST_USER + (index * 2_654_435_761 >> 7) % self.users

    def at_of(self, index: int) -> datetime:
        return BASE + timedelta(milliseconds=(index * 40_503 * 2_654_435_761) % DAY_MS)

    def record(self, index: int) -> Record:
        payload = UserActivity(user_id=self.user_of(index), at=self.at_of(index), kind="message")
        envelope = EventEnvelope.wrap(
            payload, producer=PRODUCER, event_id=self.event_id(index), occurred_at=payload.at
        )
        return envelope_record(envelope, USERS.name)

    def sequence(self, events: int, duplicate_ratio: float, seed: int = 1) -> Iterator[int]:
        """Indices 0..events-1 in order, each followed now and then by a recent one again."""
        rng = random.Random(seed)
        for index in range(events):
            yield index
            if duplicate_ratio and rng.random() < duplicate_ratio:
                yield rng.randrange(max(0, index - 1_000), index + 1)


@dataclass
class Tally:
    """What was published: records (copies included), distinct events, each user's latest ``at``."""

    records: int = 0
    distinct: int = 0
    latest: dict[int, datetime] = field(default_factory=dict)

    def note(self, plan: ActivityPlan, index: int) -> None:
        self.records += 1
        self.distinct = max(self.distinct, index + 1)
        user, at = plan.user_of(index), plan.at_of(index)
        if user not in self.latest or at > self.latest[user]:
            self.latest[user] = at


class Sender:
    """An outside producer (acks=all, idempotent) that sends a chunk at a time and waits for it."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id="dianabot-bench-scale-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )

    async def __aenter__(self) -> Sender:
        await self.producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.producer.stop()

    async def send(self, records: Sequence[Record]) -> None:
        futures = [
            await self.producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers))
            for r in records
        ]
        await asyncio.gather(*futures)


def records(plan: ActivityPlan, indices: Iterable[int], tally: Tally) -> Iterator[Record]:
    """The records of `indices`, each noted in `tally` as it is made."""
    for index in indices:
        tally.note(plan, index)
        yield plan.record(index)


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def publish(sender: Sender, stream: Iterable[Record], rate: float | None = None) -> tuple[int, float]:
    """Publish `stream` at `rate` records/s (ten chunks a second), or as fast as Kafka takes it when
    `rate` is None; returns the records sent and the seconds it took."""
    size = max(1, int(rate / 10)) if rate else 2_000
    started = time.monotonic()
    sent = 0
    for chunk in _chunks(stream, size):
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await sender.send(chunk)
        sent += len(chunk)
    return sent, time.monotonic() - started


# --- the run's database and consumer groups --------------------------------------------------------


async def prepare(kafka: KafkaSettings, server_url: str, name: str, source: Path, plan: ActivityPlan) -> str:
    """A fresh database `name` migrated by `source`, with the plan's users; every consumer group of
    the service moved to the end of its topics (so the run's consumers read only the run's records).
    Returns the database's URL."""
    url = await database.recreate(server_url, name)
    await database.migrate(url, source)
    await database.load_fixtures(url, Fixtures(users=plan.user_ids))
    lanes = service_lanes()
    await groups.declare(kafka, lanes)
    await skip_to_end(kafka, lanes)
    return url


async def skip_to_end(kafka: KafkaSettings, lanes: list[Lane], within_s: float = 120.0) -> None:
    """``groups.skip_to_end``, tried again while a group still lists a member: a process of the
    previous drain that was killed, or stopped while joining, stays a member until its session
    (or the rebalance it was in) times out."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await groups.skip_to_end(kafka, lanes)
            return
        except groups.GroupBusyError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(5)


def logs_dir(kind: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = REPO / ".devstack/scale" / f"{stamp}-{kind}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- reading the ledger ------------------------------------------------------------------------------


async def handled(engine: AsyncEngine, consumer: str) -> int:
    async with engine.connect() as connection:
        query = text("SELECT count(*) FROM processed_events WHERE consumer = :c")
        return int((await connection.execute(query, {"c": consumer})).scalar_one())


_LEDGER_CHECK = text(
    """
    WITH published AS (
        SELECT CAST(:prefix || lpad(to_hex(i), 15, '0') AS uuid) AS event_id
        FROM generate_series(0, CAST(:n AS bigint) - 1) AS i
    ), ledger AS (
        SELECT event_id FROM processed_events WHERE consumer = :c
    )
    SELECT
        (SELECT count(*) FROM ledger) AS ledger_rows,
        (SELECT count(*) FROM published p WHERE NOT EXISTS (
            SELECT 1 FROM ledger l WHERE l.event_id = p.event_id)) AS lost,
        (SELECT count(*) - count(DISTINCT event_id) FROM ledger) AS duplicated,
        (SELECT count(*) FROM ledger l WHERE NOT EXISTS (
            SELECT 1 FROM published p WHERE p.event_id = l.event_id)) AS unexpected
    """
)


async def verify(engine: AsyncEngine, consumer: str, plan: ActivityPlan, tally: Tally) -> dict[str, int]:
    """Ledger rows against the published ids, and ``users.last_active_at`` against the latest ``at``."""
    async with engine.connect() as connection:
        counts = (
            await connection.execute(
                _LEDGER_CHECK, {"prefix": plan.id_prefix + VARIANT_HEX, "n": tally.distinct, "c": consumer}
            )
        ).one()
        rows = await connection.execute(
            text("SELECT id, last_active_at FROM users WHERE id = ANY(:ids)"), {"ids": plan.user_ids}
        )
        found: dict[int, datetime | None] = {int(r.id): r.last_active_at for r in rows}
    wrong = sum(1 for user in plan.user_ids if found.get(user) != tally.latest.get(user))
    return {
        "published_records": tally.records,
        "published_distinct": tally.distinct,
        "published_twice": tally.records - tally.distinct,
        "ledger_rows": int(counts.ledger_rows),
        "lost": int(counts.lost),
        "duplicated": int(counts.duplicated),
        "unexpected": int(counts.unexpected),
        "users_with_activity": len(tally.latest),
        "last_active_at_wrong": wrong,
    }


async def commits_per_tenth(engine: AsyncEngine, consumer: str) -> list[tuple[float, int]]:
    """Ledger rows per 0.1 s of their transaction's commit time (PostgreSQL's commit timestamp,
    pg.sh turns it on; the transaction's start when it is off), as (wall-clock s, rows)."""
    query = text(
        """
        SELECT floor(extract(epoch FROM coalesce(pg_xact_commit_timestamp(xmin), processed_at)) * 10) / 10
               AS second, count(*) AS events
        FROM processed_events WHERE consumer = :c GROUP BY 1 ORDER BY 1
        """
    )
    async with engine.connect() as connection:
        return [(float(r.second), int(r.events)) for r in await connection.execute(query, {"c": consumer})]


def drain_rate(commits: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """Events per second from the first commit to the last."""
    if not commits:
        return {"events": 0, "seconds": 0.0, "events_per_s": 0.0}
    events = sum(n for _, n in commits)
    seconds = max(0.1, commits[-1][0] - commits[0][0] + 0.1)
    return {"events": events, "seconds": round(seconds, 1), "events_per_s": round(events / seconds)}


# --- consumer-group membership -------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSample:
    t: float  # wall clock, s
    state: str
    members: frozenset[tuple[str, str]]  # (member id, client id); a restarted process gets a new member id

    @property
    def clients(self) -> set[str]:
        return {client for _, client in self.members}


@dataclass
class GroupWatch:
    """Samples one consumer group's state and members twice a second."""

    kafka: KafkaSettings
    group: str
    samples: list[GroupSample] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        admin = admin_client(self.kafka, "bench-scale-watch")
        await admin.start()
        try:
            while not stop.is_set():
                [response] = await admin.describe_consumer_groups([self.group])
                [described] = response.groups
                members = frozenset((str(m[0]), str(m[1])) for m in described[5])
                self.samples.append(GroupSample(time.time(), str(described[2]), members))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)
        finally:
            await admin.close()

    def stable_with(self, clients: set[str]) -> bool:
        """Whether the latest sample shows the group stable with exactly these clients as members."""
        last = self.samples[-1] if self.samples else None
        return (
            last is not None
            and last.state == "Stable"
            and len(last.members) == len(clients) == len(last.clients & clients)
        )

    def joined(self, client: str, since: float) -> float | None:
        """When a new member of `client` (a member id not seen before `since`: a killed process's
        member stays listed until its session times out) was first seen in the stable group."""
        known = {m for s in self.samples if s.t < since for m, c in s.members if c == client}
        return next(
            (
                s.t
                for s in self.samples
                if s.t >= since
                and s.state == "Stable"
                and any(c == client and m not in known for m, c in s.members)
            ),
            None,
        )

    def dump(self, path: Path) -> None:
        """Every sample as a JSON line: time, state and members."""
        with path.open("w") as out:
            for s in self.samples:
                members = sorted(f"{client} {member}" for member, client in s.members)
                out.write(json.dumps({"t": round(s.t, 2), "state": s.state, "members": members}) + "\n")

    def rebalances(self, since: float, until: float) -> int:
        """Times the stable group's member set changed between `since` and `until` (wall clock)."""
        stable = [s.members for s in self.samples if s.state == "Stable" and since <= s.t <= until]
        before = [s.members for s in self.samples if s.state == "Stable" and s.t < since][-1:]
        sets = before + stable
        return sum(1 for a, b in itertools.pairwise(sets) if a != b)

    def windows_with(self, members: int, since: float, until: float) -> list[tuple[float, float]]:
        """Stretches of time, clipped to [since, until], in which the group was stable with
        `members` members (from one sample to the next)."""
        found = []
        for a, b in itertools.pairwise(self.samples):
            if a.state == "Stable" and len(a.members) == members:
                start, end = max(a.t, since), min(b.t, until)
                if end > start:
                    found.append((start, end))
        return found


def rate_within(
    commits: Sequence[tuple[float, int]], windows: Sequence[tuple[float, float]], least_s: float = 10.0
) -> float | None:
    """Events per second committed inside `windows`; None when they add up to under `least_s`
    (batches of 500 commit in bursts: a few seconds say little)."""
    seconds = sum(end - start for start, end in windows)
    if seconds < least_s:
        return None
    events = sum(n for t, n in commits if any(start <= t < end for start, end in windows))
    return round(events / seconds)


def rss_kib(pid: int) -> int | None:
    """A process's resident set (VmRSS), KiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_and_print(suite: Coroutine[Any, Any, dict[str, Any]]) -> int:
    """A suite's command line: run it, print its report as one JSON line, exit 1 unless it is ok."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    report = asyncio.run(suite)
    print(json.dumps(report, separators=(",", ":"), default=str), flush=True)
    return 0 if report["ok"] else 1
