"""One chaos run from start to report: set-up, traffic under faults, drain, verification."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.chaos import database, expect, faults, fuzz, groups, readback, verify, workload
from bench.chaos.cluster import (
    CLIENT_ID,
    REPO,
    Cluster,
    ServiceConfig,
    free_ports,
    kafka_up,
    postgres_up,
    scheduler_leader,
)
from bench.chaos.progress import Watch, idle_windows
from bench.chaos.publisher import Publisher
from bench.chaos.report import fault_report, judge, totals
from bench.chaos.topology import Lane, service_lanes
from dianabot_contracts.topics import DEAD_LETTERS, SCHEDULER_TICKS
from dianabot_core.kafka import admin_client
from dianabot_core.schedule.settings import SCHEDULER_LOCK_KEY
from dianabot_core.settings import KafkaSettings, Settings, load_settings

logger = logging.getLogger("bench.chaos")
IDLE_ALLOWANCE_S = 30.0


@dataclass(frozen=True)
class Options:
    seed: int
    events: int
    fuzz: int
    duplicate_ratio: float
    consumers: int
    kills: int
    publish_s: float
    pg_outage_s: float
    drain_timeout_s: float
    budget_s: float
    database: str
    source: str
    log_level: str
    skip_faults: frozenset[str] = frozenset()


def step(message: str, *args: object) -> None:
    logger.warning(message, *args)


# --- set-up --------------------------------------------------------------------------------------


def prepare_source(kind: str) -> tuple[Path, str]:
    """The tree the service processes run from: the working tree, or a snapshot of HEAD (what
    is committed, without anyone's edits in progress)."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    if kind == "worktree":
        return REPO, commit
    target = REPO / ".devstack/chaos/src" / commit
    _prune(target.parent, keep=3)
    if not (target / "consumers").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, commit


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest entries of `directory` (old snapshots, old runs' logs)."""
    if not directory.is_dir():
        return
    entries = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def merge(seed: int, stream: list[workload.Record], cases: list[fuzz.FuzzCase]) -> list[workload.Record]:
    """Put the hostile records among the valid ones, at places chosen by the seed."""
    rng = random.Random(seed * 31 + 7)
    at: dict[int, list[workload.Record]] = {}
    for case in cases:
        at.setdefault(rng.randrange(len(stream) + 1), []).append(case.record)
    merged = []
    for i in range(len(stream) + 1):
        merged += at.get(i, [])
        if i < len(stream):
            merged.append(stream[i])
    return merged


async def wait_ready(
    settings: KafkaSettings, lanes: list[Lane], cluster: Cluster, engine: AsyncEngine, within_s: float = 300
) -> float:
    """Until every stage-0 group is stable with a member, every consumer process is in some group,
    and a scheduler replica leads.

    Not until every process is in every group: a process joins its groups one at a time (FastStream
    starts the subscribers in turn, and each start waits for its group's rebalance), which with
    another process already in the groups takes minutes; the run starts while that goes on.
    """
    started = time.monotonic()
    admin = admin_client(settings, "chaos-ready")
    await admin.start()
    try:
        while time.monotonic() - started < within_s:
            cluster.check_alive()
            if await _all_served(admin, lanes, cluster.consumer_count):
                break
            await asyncio.sleep(1)
        else:
            raise RuntimeError(f"consumer groups not served by every process within {within_s}s")
    finally:
        await admin.close()
    while await scheduler_leader(cluster, engine, SCHEDULER_LOCK_KEY) is None:
        if time.monotonic() - started > within_s:
            raise RuntimeError("no scheduler replica took the lead")
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


async def _all_served(admin: AIOKafkaAdminClient, lanes: list[Lane], processes: int) -> bool:
    members = await group_members(admin, [lane.group for lane in lanes])
    seen = {client for clients in members.values() for client in clients}
    return all(members.values()) and all(f"{CLIENT_ID}-consumer-{i}" in seen for i in range(processes))


async def group_members(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, list[str]]:
    """The client ids of each stable group's members (an unstable group counts as having none)."""
    found = {}
    for group in names:
        [response] = await admin.describe_consumer_groups([group])
        [described] = response.groups
        found[group] = [str(m[1]) for m in described[5]] if described[2] == "Stable" else []
    return found


# --- during the run ------------------------------------------------------------------------------


async def keep_alive(cluster: Cluster, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cluster.check_alive()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def outbox_pending(engine: AsyncEngine) -> int | None:
    try:
        return await verify.outbox_pending(engine)
    except Exception:
        return None


async def drain(watch: Watch, engine: AsyncEngine, cluster: Cluster, since: float, until: float) -> bool:
    """Until no group has lag (retry groups included) and the outbox is empty, three checks running."""
    stable = 0
    while time.monotonic() < until:
        cluster.check_alive()
        done = (
            watch.source_lag() == 0
            and watch.retry_lag == 0
            and watch.retry_lag_at > since
            and await outbox_pending(engine) == 0
        )
        stable = stable + 1 if done else 0
        if stable >= 3:
            return True
        await asyncio.sleep(2)
    return False


async def restore_infrastructure() -> None:
    """Kafka and PostgreSQL are shared: whatever happened to the run, leave both running."""
    for start in (postgres_up, kafka_up):
        try:
            await start()
        except Exception:
            logger.exception("could not start %s again", start.__name__)


# --- the report ----------------------------------------------------------------------------------


async def double_state(base_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(f"{base_url}/_double/messages") as response:
            messages = (await response.json())["messages"]
        async with http.get(f"{base_url}/_double/stats") as response:
            stats = await response.json()
    return messages, stats


# --- the run -------------------------------------------------------------------------------------


class Run:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.started = time.monotonic()
        self.settings: Settings = load_settings()
        self.lanes = service_lanes()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        _prune(REPO / ".devstack/chaos/runs", keep=20)
        self.logs = REPO / ".devstack/chaos/runs" / f"{stamp}-seed{options.seed}"
        self.logs.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def __call__(self) -> dict[str, Any]:
        o = self.options
        source, commit = prepare_source(o.source)
        work = workload.build(o.seed, o.events, o.duplicate_ratio)
        cases = fuzz.build(o.seed, o.fuzz, self.lanes)
        stream = merge(o.seed, work.stream, cases)
        schedule = faults.plan(
            o.seed,
            o.publish_s,
            consumers=o.consumers,
            kills=o.kills,
            pg_outage_s=o.pg_outage_s,
            skip=o.skip_faults,
        )
        step(
            "chaos: %d records (%d valid, %d hostile), %d faults; logs in %s",
            len(stream),
            len(work.stream),
            len(cases),
            len(schedule),
            self.logs,
        )
        url = await database.recreate(self.settings.database.url.get_secret_value(), o.database)
        await database.migrate(url, source)
        await database.load_fixtures(url, work.fixtures)
        kafka = self.settings.kafka
        await groups.declare(kafka, self.lanes)
        reset = await groups.skip_to_end(kafka, self.lanes)
        topics = sorted({lane.topic for lane in self.lanes} | {SCHEDULER_TICKS.name})
        source_starts = await readback.end_offsets(kafka, readback.partitions_of(topics))
        letter_starts = await readback.end_offsets(kafka, readback.partitions_of([DEAD_LETTERS.name]))
        step(
            "chaos: database %s ready, %d consumer groups moved to the end (%.0fs)",
            o.database,
            reset,
            self.elapsed(),
        )
        engine = create_async_engine(url, pool_pre_ping=True)
        cluster = Cluster(
            ServiceConfig(
                source,
                self.logs,
                kafka.bootstrap_servers,
                url,
                log_level=o.log_level,
                health_ports={f"consumer-{i}": port for i, port in enumerate(free_ports(o.consumers))},
            ),
            o.consumers,
        )
        try:
            result = await self._run(cluster, engine, stream, schedule)
            return await self._report(
                cluster,
                engine,
                work,
                cases,
                result,
                source_starts,
                letter_starts,
                {"commit": commit, "tree": o.source},
            )
        finally:
            await cluster.stop_service()
            await cluster.stop_double()
            await engine.dispose()
            await restore_infrastructure()

    async def _run(
        self,
        cluster: Cluster,
        engine: AsyncEngine,
        stream: list[workload.Record],
        schedule: list[faults.Fault],
    ) -> dict[str, Any]:
        o = self.options
        await cluster.start()
        ready_s = await wait_ready(self.settings.kafka, self.lanes, cluster, engine)
        step(
            "chaos: %d consumers and 2 schedulers ready in %.0fs; publishing over %.0fs",
            o.consumers,
            ready_s,
            o.publish_s,
        )
        origin, origin_wall = time.monotonic(), time.time()
        watch = Watch(self.settings.kafka, self.lanes, origin, processes=o.consumers)
        stop = asyncio.Event()
        background = [asyncio.create_task(watch.run(stop)), asyncio.create_task(keep_alive(cluster, stop))]
        injector = faults.FaultInjector(cluster, engine, SCHEDULER_LOCK_KEY, origin)
        publisher = Publisher(self.settings.kafka, origin)
        published, _ = await asyncio.gather(publisher.publish(stream, o.publish_s), injector.run(schedule))
        step(
            "chaos: published %d records (%d refused, %d retries); draining",
            published.sent,
            len(published.refused),
            published.retries,
        )
        await cluster.stop_schedulers()  # no new ticks: the tick lanes can drain too
        drain_started = time.monotonic()
        until = min(drain_started + o.drain_timeout_s, self.started + o.budget_s - 120)
        drained = await drain(watch, engine, cluster, time.monotonic() - origin, until)
        step(
            "chaos: %s after %.0fs", "drained" if drained else "NOT drained", time.monotonic() - drain_started
        )
        stop.set()
        await asyncio.gather(*background)
        await cluster.stop_service()
        messages, stats = await double_state(cluster.base_url)
        return {
            "watch": watch,
            "published": published,
            "faults": injector.records,
            "drained": drained,
            "drain_s": round(time.monotonic() - drain_started, 1),
            "messages": messages,
            "stats": stats,
            "ready_s": ready_s,
            "origin_wall": origin_wall,
        }

    async def _report(
        self,
        cluster: Cluster,
        engine: AsyncEngine,
        work: workload.Workload,
        cases: list[fuzz.FuzzCase],
        result: dict[str, Any],
        source_starts: readback.Offsets,
        letter_starts: readback.Offsets,
        source: dict[str, str],
    ) -> dict[str, Any]:
        kafka = self.settings.kafka
        source_records = await readback.read(
            kafka, source_starts, await readback.end_offsets(kafka, list(source_starts))
        )
        letters = await readback.read(
            kafka, letter_starts, await readback.end_offsets(kafka, list(letter_starts))
        )
        model = expect.Model(self.lanes, work.fixtures)
        landed = verify.read_landed(source_records, model)
        state = await verify.read_state(engine)
        watch: Watch = result["watch"]
        fault_list = fault_report(result["faults"], watch)
        windows = idle_windows(watch.samples)
        longest_fault = max(
            (f["to_s"] - f["from_s"] for f in fault_list if f["to_s"] is not None), default=0.0
        )
        effects = verify.effects_report(model.expected, state)
        by_id = {case.fuzz_id: case for case in cases}
        report: dict[str, Any] = {
            "suite": "chaos",
            "seed": self.options.seed,
            "source": source,
            "events_published": landed.valid_records,
            "events_distinct": len(model.seen),
            **totals(effects),
            "effects": effects,
            "telegram": verify.telegram_report(model.expected, result["messages"], result["stats"], state),
            "fuzz": {
                "generated": len(cases),
                "entered_kafka": sum(len(v) for v in landed.fuzz.values()),
                "refused_by_kafka": len(result["published"].refused),
                "refused_by_category": dict(
                    Counter(by_id[n].category for n in result["published"].refused).most_common()
                ),
                "by_category": dict(sorted(_categories(cases).items())),
            },
            "dead_letters": verify.dead_letter_report(letters, state, by_id, landed, self._crashes(result)),
            "scheduler": {
                "takeover_s": [
                    f.get("takeover_s") for f in fault_list if f["kind"] == "scheduler_leader_kill"
                ],
                **verify.ticks_report(landed),
            },
            "faults": fault_list,
            "consumer_kills": sum(1 for f in fault_list if f["kind"] == "consumer_kill"),
            "max_partition_idle_s": round(windows[0].seconds, 1) if windows else 0.0,
            "idle_limit_s": round(longest_fault + IDLE_ALLOWANCE_S, 1),
            "longest_idle": [{**w.as_dict(), "no_member_s": watch.unserved_s(w)} for w in windows[:5]],
            "drained": result["drained"],
            "drain_s": result["drain_s"],
            "lagging_at_end": watch.lagging()[:10],
            "outbox_pending_at_end": state.outbox_pending,
            "process_exits": cluster.exits,
            "startup_refused_while_a_dependency_was_down": len(cluster.startup_failures),
            "foreign_group_members": sorted(watch.foreign_members),
            # How many of the stage-0 groups had every consumer process as a member, over the run.
            "group_membership": _membership(watch, len(self.lanes)),
            "lag_samples": len(watch.samples),
            "lag_samples_failed": watch.failed_samples,
            "publish_retries": result["published"].retries,
            "publish_retry_errors": dict(result["published"].errors),
            "ready_s": result["ready_s"],
            "logs": str(self.logs),
        }
        report["targets"] = judge(report)
        report["ok"] = all(report["targets"].values())
        report["duration_s"] = round(self.elapsed(), 1)
        self._keep(report, watch)
        return report

    @staticmethod
    def _crashes(result: dict[str, Any]) -> list[float]:
        """When each kill or outage began, as wall-clock time."""
        kinds = ("consumer_kill", "postgres_outage", "kafka_restart")
        return [result["origin_wall"] + f.started_s for f in result["faults"] if f.kind in kinds]

    def _keep(self, report: dict[str, Any], watch: Watch) -> None:
        """The report and every lag sample, next to the processes' logs (for looking into a run)."""
        (self.logs / "report.json").write_text(json.dumps(report, indent=2, default=str))
        with (self.logs / "members.jsonl").open("w") as out:
            out.writelines(json.dumps({"t": round(t, 1), "groups": g}) + "\n" for t, g in watch.members)
        with (self.logs / "lag.jsonl").open("w") as out:
            for sample in watch.samples:
                positions = {f"{g}|{t}|{p}": list(v) for (g, t, p), v in sample.positions.items()}
                out.write(json.dumps({"t": round(sample.t, 2), "positions": positions}) + "\n")


def _membership(watch: Watch, groups: int) -> dict[str, Any]:
    """Group membership over the run, about once a minute: the groups every consumer process is in,
    and the groups each one is in (a restarted process joins its groups one at a time)."""
    counts = [n for _, n in watch.membership]
    per_process = {
        f"consumer-{i}": [n for t, n in watch.groups_of(f"{CLIENT_ID}-consumer-{i}") if int(t) % 60 < 10]
        for i in range(watch.processes)
    }
    return {
        "groups": groups,
        "at_end": counts[-1] if counts else None,
        "by_every_consumer_each_minute": [n for t, n in watch.membership if int(t) % 60 < 10],
        "by_each_consumer_each_minute": per_process,
    }


def _categories(cases: list[fuzz.FuzzCase]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.category] = counts.get(case.category, 0) + 1
    return counts


async def run(options: Options) -> dict[str, Any]:
    return await Run(options)()
