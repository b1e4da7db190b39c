"""Memory soak: a million ``user.activity`` events through one consumer process at a steady rate,
its resident memory sampled every 10 s.

On a fresh database with the run's users inserted first and the service's consumer groups moved
to the end of their topics, one real consumer process (``faststream run consumers.app:app``, as
``bench/chaos`` starts it; no scheduler) runs until the activity handler's group is stable with
it. Then ``--events`` events (and ``--duplicates`` of them again, same id) are published at
``--rate`` per second, ten chunks a second, and the run waits until the ledger holds every one.

Every ``--sample-every`` s: the process's RSS (``VmRSS`` of ``/proc/<pid>/status``), the events
published so far and the ledger rows of the activity handler (backlog = distinct events published
minus handled; a backlog that stays small says the rate is one the process keeps up with).

Memory growth = RSS at the end (the last sample, taken once the backlog is handled) against RSS
after warm-up (the first sample once max(``--warmup``, 10 % of the publishing time) has passed
since publishing began); the target is ≤ ``--growth-target`` %. The slope of a least-squares line
through the samples after warm-up is reported beside it. Lost and duplicated are checked as in
``bench/scaleout.py`` (``bench/activity.py``). Prints one JSON object.
Run: ``python -m bench.soak --kafka HOST:PORT --database-url URL`` against a Kafka and PostgreSQL
no other service consumes from (the run moves the service's consumer groups).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.activity import (
    DEFAULT_DATABASE,
    DEFAULT_KAFKA,
    ActivityPlan,
    GroupWatch,
    Sender,
    Tally,
    activity_lane,
    add_service_arguments,
    handled,
    handler_kind,
    logs_dir,
    prepare,
    publish,
    records,
    rss_kib,
    run_and_print,
    verify,
)
from bench.chaos.cluster import CLIENT_ID, Cluster, ServiceConfig
from bench.chaos.run import prepare_source
from dianabot_core.settings import KafkaSettings

logger = logging.getLogger("bench.soak")


@dataclass(frozen=True)
class SoakOptions:
    events: int = 1_000_000
    rate: float = 1_000.0
    users: int = 2_000
    duplicate_ratio: float = 0.01
    sample_every_s: float = 10.0
    warmup_s: float = 60.0
    growth_target_percent: float = 10.0
    ready_timeout_s: float = 300.0
    drain_timeout_s: float = 900.0
    bootstrap_servers: str = DEFAULT_KAFKA
    database_url: str = DEFAULT_DATABASE
    database: str = "dianabot_soak"
    source: str = "head"
    log_level: str = "WARNING"


@dataclass(frozen=True)
class Sample:
    t: float  # s since publishing began
    rss_kib: int
    published: int
    handled: int


class Sampler:
    """RSS of consumer process 0, records published and events handled, every `every_s`."""

    def __init__(self, cluster: Cluster, engine: AsyncEngine, consumer: str, tally: Tally) -> None:
        self.cluster = cluster
        self.engine = engine
        self.consumer = consumer
        self.tally = tally
        self.samples: list[Sample] = []
        self.origin = time.monotonic()
        self.pids: set[int] = set()

    async def sample(self) -> Sample:
        self.cluster.check_alive()  # a process that died is started again (and noted in cluster.exits)
        process = self.cluster.consumers[0]
        assert process is not None
        self.pids.add(process.pid)
        sample = Sample(
            round(time.monotonic() - self.origin, 1),
            rss_kib(process.pid) or 0,
            self.tally.distinct,
            await handled(self.engine, self.consumer),
        )
        self.samples.append(sample)
        return sample

    async def run(self, every_s: float, done: asyncio.Event) -> None:
        """Sample until `done` is set; the last sample is taken after it is."""
        next_at = time.monotonic()
        while True:
            sample = await self.sample()
            if done.is_set():
                return
            logger.warning(
                "soak: %.0fs rss %.1f MiB, published %d, handled %d",
                sample.t,
                sample.rss_kib / 1024,
                sample.published,
                sample.handled,
            )
            next_at += every_s
            try:
                await asyncio.wait_for(done.wait(), max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                continue


async def wait_member(cluster: Cluster, watch: GroupWatch, timeout_s: float) -> float:
    """Until the activity group is stable with consumer process 0; returns the seconds it took."""
    started = time.monotonic()
    while not watch.stable_with({f"{CLIENT_ID}-consumer-0"}):
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{watch.group} had no stable member within {timeout_s}s")
        cluster.check_alive()
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


async def wait_handled(engine: AsyncEngine, consumer: str, distinct: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await handled(engine, consumer) >= distinct:
            return True
        await asyncio.sleep(1)
    return False


def slope_kib_per_min(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return round(sum((t - mean_t) * (r - mean_r) for t, r in points) / spread * 60, 1)


def memory_report(samples: list[Sample], publish_s: float, options: SoakOptions) -> dict[str, Any]:
    warmup_s = max(options.warmup_s, 0.1 * publish_s)
    after = [s for s in samples if s.t >= warmup_s]
    if not after:
        return {"warmup_s": round(warmup_s, 1), "note": "no sample after warm-up"}
    base, end = after[0], after[-1]
    growth = (end.rss_kib - base.rss_kib) / base.rss_kib * 100
    return {
        "warmup": f"max({options.warmup_s:g} s, 10 % of the publishing time) from the start of publishing",
        "warmup_s": round(warmup_s, 1),
        "rss_start_mib": round(samples[0].rss_kib / 1024, 1),
        "rss_after_warmup_mib": round(base.rss_kib / 1024, 1),
        "rss_after_warmup_at_s": base.t,
        "rss_end_mib": round(end.rss_kib / 1024, 1),
        "rss_end_at_s": end.t,
        "rss_max_after_warmup_mib": round(max(s.rss_kib for s in after) / 1024, 1),
        "growth_percent": round(growth, 2),
        "growth_target_percent": options.growth_target_percent,
        "slope_after_warmup_kib_per_min": slope_kib_per_min([(s.t, s.rss_kib) for s in after]),
    }


async def soak(options: SoakOptions) -> dict[str, Any]:
    """The whole soak: set-up, one process, steady publishing, drain, memory and ledger report."""
    started = time.monotonic()
    source, commit = prepare_source(options.source)
    kafka = KafkaSettings(bootstrap_servers=options.bootstrap_servers)
    lane = activity_lane()
    plan = ActivityPlan(users=options.users)
    url = await prepare(kafka, options.database_url, options.database, source, plan)
    logs = logs_dir("soak")
    config = ServiceConfig(source, logs, kafka.bootstrap_servers, url, log_level=options.log_level)
    cluster = Cluster(config, consumer_count=1, scheduler_count=0)
    engine = create_async_engine(url)
    watch = GroupWatch(kafka, lane.group)
    stop_watch = asyncio.Event()
    tally = Tally()
    sampler = Sampler(cluster, engine, lane.handler, tally)
    done = asyncio.Event()
    try:
        await cluster.start()
        watching = asyncio.create_task(watch.run(stop_watch))
        ready_s = await wait_member(cluster, watch, options.ready_timeout_s)
        stop_watch.set()
        await watching
        logger.warning("soak: consumer ready in %.0fs; publishing at %g/s", ready_s, options.rate)
        sampler.origin = time.monotonic()
        sampling = asyncio.create_task(sampler.run(options.sample_every_s, done))
        stream = records(plan, plan.sequence(options.events, options.duplicate_ratio), tally)
        async with Sender(kafka) as sender:
            sent, publish_s = await publish(sender, stream, options.rate)
        drained = await wait_handled(engine, lane.handler, tally.distinct, options.drain_timeout_s)
        drain_s = time.monotonic() - sampler.origin - publish_s
        done.set()
        await sampling
        checks = await verify(engine, lane.handler, plan, tally)
    finally:
        done.set()
        stop_watch.set()
        await cluster.stop_service()
        await cluster.stop_double()
        await engine.dispose()
    samples = sampler.samples
    (logs / "samples.json").write_text(json.dumps([s.__dict__ for s in samples]))
    memory = memory_report(samples, publish_s, options)
    backlog = [s.published - s.handled for s in samples]
    report: dict[str, Any] = {
        "suite": "soak",
        "source": {"tree": options.source, "commit": commit},
        "handler": lane.handler,
        "handler_kind": handler_kind(source, lane.handler),
        "events": options.events,
        "rate_per_s": options.rate,
        "achieved_rate_per_s": round(sent / publish_s) if publish_s else None,
        "users": options.users,
        "cpus": os.cpu_count(),
        # Anything else running on the machine shares its CPUs with the service, Kafka and PostgreSQL.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "ready_s": ready_s,
        "publish_s": round(publish_s, 1),
        "drain_after_publish_s": round(drain_s, 1),
        "drained": drained,
        "events_handled": checks["ledger_rows"],
        **checks,
        "backlog_max": max(backlog, default=0),
        "samples": len(samples),
        "sample_every_s": options.sample_every_s,
        "memory": memory,
        "rss_mib_series": [[s.t, round(s.rss_kib / 1024, 1)] for s in samples],
        "consumer_pids": sorted(sampler.pids),
        "process_exits": cluster.exits,
        "logs": str(logs),
    }
    report["ok"] = bool(
        drained
        and checks["lost"] == checks["duplicated"] == checks["unexpected"] == 0
        and checks["last_active_at_wrong"] == 0
        and len(sampler.pids) == 1
        and memory.get("growth_percent", 100.0) <= options.growth_target_percent
    )
    report["duration_s"] = round(time.monotonic() - started, 1)
    return report


def parse_args(argv: list[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="distinct events published")
    parser.add_argument("--rate", type=float, default=1_000.0, help="records published per second")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--duplicates", type=float, default=0.01, help="share of events published twice")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="least seconds of warm-up")
    parser.add_argument("--growth-target", type=float, default=10.0, help="largest RSS growth, percent")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    add_service_arguments(parser, database="dianabot_soak", processes="process")
    a = parser.parse_args(argv)
    return SoakOptions(
        events=a.events,
        rate=a.rate,
        users=a.users,
        duplicate_ratio=a.duplicates,
        sample_every_s=a.sample_every,
        warmup_s=a.warmup,
        growth_target_percent=a.growth_target,
        drain_timeout_s=a.drain_timeout,
        bootstrap_servers=a.kafka,
        database_url=a.database_url,
        database=a.database,
        source=a.source,
        log_level=a.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    return run_and_print(soak(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
