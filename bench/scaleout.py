"""Scale-out: how fast 1, 2 and 3 consumer processes drain a ``user.activity`` backlog on the
6-partition ``dianabot.users`` topic, and whether rebalances mid-drain lose or double anything.

For each process count N, on a fresh database with the run's users inserted first:

1. every consumer group of the service is moved to the end of its topics, and a backlog of
   ``--events`` events (and ``--duplicates`` of them again, same id) is published before any
   consumer runs (so no publisher shares the CPUs during the drain);
2. the real service (``faststream run consumers.app:app``, as ``bench/chaos`` starts it; no
   scheduler) drains it: process 0 first, then one more process every ``--stagger`` s. Each one
   rebalances the activity handler's consumer group when it reaches it, which is when its turn
   comes among its process's consumer groups (over 100, joined one after another, one
   rebalance each): ``join_s``;
3. when ``--kill-at`` of the backlog is handled (N > 1), process 0 is killed with SIGKILL and
   started again ``--restart-after`` s later: the group rebalances when the killed member's
   session times out (its partitions wait until then, so the drain cannot end before it), and
   again if the new process reaches the group before the drain ends;
4. throughput comes from the processed-events ledger (the activity handler's rows, by their
   transaction's commit time): events from the first commit to the last (``events_per_s``, the
   joins and the kill included), and the steady rate (``events_per_s_with_all_processes``) over
   the time before the kill in which the group was stable with all N processes;
5. checks: ledger rows = distinct published ids, none lost, none twice, none unexpected, and each
   user's ``users.last_active_at`` = the latest ``at`` published for them.

The group's state and members are sampled twice a second (``group.jsonl`` in the run's log
directory, with the ledger's commits per 0.1 s). Prints one JSON object.
Run: ``python -m bench.scaleout --kafka HOST:PORT --database-url URL`` against a Kafka and
PostgreSQL no other service consumes from (the run moves the service's consumer groups).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
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
    commits_per_tenth,
    drain_rate,
    handled,
    handler_kind,
    logs_dir,
    prepare,
    publish,
    rate_within,
    records,
    run_and_print,
    verify,
)
from bench.chaos.cluster import CLIENT_ID, Cluster, ServiceConfig
from bench.chaos.readback import end_offsets, partitions_of
from bench.chaos.run import prepare_source
from dianabot_contracts.topics import USERS
from dianabot_core.settings import KafkaSettings

logger = logging.getLogger("bench.scaleout")


@dataclass(frozen=True)
class ScaleOptions:
    processes: tuple[int, ...] = (1, 2, 3)
    events: int = 600_000
    users: int = 2_000
    duplicate_ratio: float = 0.01
    stagger_s: float = 5.0
    kill_at: float = 0.85  # share of the backlog handled when process 0 is killed
    restart_after_s: float = 2.0
    drain_timeout_s: float = 600.0
    bootstrap_servers: str = DEFAULT_KAFKA
    database_url: str = DEFAULT_DATABASE
    database: str = "dianabot_scale"
    source: str = "head"
    log_level: str = "WARNING"


def client(process: int) -> str:
    """The Kafka client id of consumer process `process` (ServiceConfig gives each role its own)."""
    return f"{CLIENT_ID}-consumer-{process}"


async def start_staggered(cluster: Cluster, processes: int, stagger_s: float, starts: list[float]) -> None:
    """Start consumer processes 1 .. `processes`-1, `stagger_s` apart (process 0 runs already),
    appending each one's start time (wall clock) to `starts`."""
    for process in range(1, processes):
        await asyncio.sleep(stagger_s)
        cluster.consumers.append(None)
        cluster.consumer_count = process + 1
        cluster.restart_consumer(process)
        starts.append(time.time())
        logger.warning("scaleout: started consumer-%d", process)


@dataclass
class KillAndRestart:
    """Once `kill_at` events are handled: SIGKILL of one process (when `enabled`) and its start
    `restart_after_s` later. The moment the share is reached is kept either way: the steady rate
    of every process count is measured up to it."""

    cluster: Cluster
    enabled: bool
    kill_at: int
    restart_after_s: float
    victim: int = 0
    reached: float | None = None  # wall clock
    restarted: float | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)

    def step(self, done: int) -> None:
        if self.reached is None and done >= self.kill_at:
            self.reached = time.time()
            if self.enabled:
                self.cluster.kill_consumer(self.victim)
                self._note("kill -9", done)
        elif (
            self.enabled
            and self.reached is not None
            and self.restarted is None
            and time.time() - self.reached >= self.restart_after_s
        ):
            self.cluster.restart_consumer(self.victim)
            self.restarted = time.time()
            self._note("restart", done)

    def _note(self, action: str, done: int) -> None:
        self.actions.append({"t": time.time(), "action": action, "process": self.victim, "handled": done})
        logger.warning("scaleout: %s consumer-%d at %d handled", action, self.victim, done)


async def wait_drained(
    engine: AsyncEngine,
    consumer: str,
    distinct: int,
    cluster: Cluster,
    faults: KillAndRestart,
    timeout_s: float,
) -> tuple[bool, float]:
    """Poll the ledger until it holds every distinct event, doing the faults meanwhile; returns
    whether it did and when it was seen (wall clock)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cluster.check_alive()
        done = await handled(engine, consumer)
        if done >= distinct:
            return True, time.time()
        faults.step(done)
        await asyncio.sleep(0.25)
    return False, time.time()


async def run_one(processes: int, options: ScaleOptions, source: Path) -> dict[str, Any]:
    """Publish the backlog, drain it with `processes` processes started during the drain (a kill
    and restart when > 1), check."""
    kafka = KafkaSettings(bootstrap_servers=options.bootstrap_servers)
    lane = activity_lane()
    plan = ActivityPlan(users=options.users)
    url = await prepare(kafka, options.database_url, options.database, source, plan)
    tally = Tally()
    partitions = partitions_of([USERS.name])
    before = await end_offsets(kafka, partitions)
    async with Sender(kafka) as sender:
        _, publish_s = await publish(
            sender, records(plan, plan.sequence(options.events, options.duplicate_ratio), tally)
        )
    after = await end_offsets(kafka, partitions)
    logger.warning(
        "scaleout: %d records published in %.0fs; %d processes", tally.records, publish_s, processes
    )
    logs = logs_dir(f"scaleout-{processes}")
    config = ServiceConfig(source, logs, kafka.bootstrap_servers, url, log_level=options.log_level)
    cluster = Cluster(config, consumer_count=1, scheduler_count=0)
    engine = create_async_engine(url)
    watch = GroupWatch(kafka, lane.group)
    stop = asyncio.Event()
    watching = asyncio.create_task(watch.run(stop))
    faults = KillAndRestart(
        cluster, processes > 1, int(options.kill_at * tally.distinct), options.restart_after_s
    )
    starts: list[float] = []
    try:
        await cluster.start()  # the Bot API double and process 0
        starts.append(time.time())
        starting = asyncio.create_task(start_staggered(cluster, processes, options.stagger_s, starts))
        drained, ended = await wait_drained(
            engine, lane.handler, tally.distinct, cluster, faults, options.drain_timeout_s
        )
        await starting
        await asyncio.sleep(1)  # one more sample of the group after the last commit
        stop.set()
        await watching
        commits = await commits_per_tenth(engine, lane.handler)
        checks = await verify(engine, lane.handler, plan, tally)
        watch.dump(logs / "group.jsonl")
        (logs / "commits.json").write_text(json.dumps(commits))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await watching
        await cluster.stop_service()
        await cluster.stop_double()
        await engine.dispose()
    first = commits[0][0] if commits else ended
    rate = drain_rate(commits)
    # None: that process had not reached the activity group when the drain ended.
    joined = [watch.joined(client(p), start) for p, start in enumerate(starts)]
    restarted = faults.restarted
    rejoined = None if restarted is None else watch.joined(client(faults.victim), restarted)
    # Every process in the group and no fault yet (a killed member stays listed until its session ends).
    steady = watch.windows_with(processes, first, faults.reached or ended)
    return {
        "processes": processes,
        "publish_s": round(publish_s, 1),
        "records_in_kafka": sum(after[tp] - before[tp] for tp in partitions),
        "drained": drained,
        **checks,
        "join_s": [
            None if t is None or t > ended else round(t - s, 1) for t, s in zip(joined, starts, strict=True)
        ],
        "started_at_s": [round(s - first, 1) for s in starts],
        "drain_s": rate["seconds"],
        "events_per_s": rate["events_per_s"],
        "events_per_s_with_all_processes": rate_within(commits, steady),
        "steady_window_s": round(sum(b - a for a, b in steady), 1),
        # Membership changes this run caused in the group before the drain ended: each later
        # process joining, the kill (its partitions wait for the session to end, so always), the
        # restarted process joining.
        "rebalances_forced": sum(1 for t in joined[1:] if t is not None and t <= ended)
        + (1 if faults.actions else 0)
        + (1 if rejoined is not None and rejoined <= ended else 0),
        "rebalances_observed": watch.rebalances(first, ended),
        "restarted_process_rejoined_after_s": None
        if rejoined is None or restarted is None or rejoined > ended
        else round(rejoined - restarted, 1),
        "actions": [{**a, "t": round(a["t"] - first, 1)} for a in faults.actions],
        "process_exits": cluster.exits,
        # Anything else running on the machine shares its CPUs with the service, Kafka and PostgreSQL.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "logs": str(logs),
    }


async def scaleout(options: ScaleOptions) -> dict[str, Any]:
    """The whole benchmark: one drain per process count, and the summary table."""
    started = time.monotonic()
    source, commit = prepare_source(options.source)
    lane = activity_lane()
    runs = []
    for processes in options.processes:
        run = await run_one(processes, options, source)
        # Kept beside the processes' logs as each drain ends: a later drain's failure loses nothing.
        (Path(run["logs"]) / "result.json").write_text(json.dumps(run, indent=1))
        runs.append(run)
    table = [
        {
            "processes": r["processes"],
            "join_s": r["join_s"],
            "events_per_s": r["events_per_s"],
            "events_per_s_with_all_processes": r["events_per_s_with_all_processes"],
            "rebalances_forced": r["rebalances_forced"],
            "rebalances_observed": r["rebalances_observed"],
            "lost": r["lost"],
            "duplicated": r["duplicated"],
        }
        for r in runs
    ]
    ok = all(
        r["drained"]
        and r["lost"] == r["duplicated"] == r["unexpected"] == r["last_active_at_wrong"] == 0
        and r["ledger_rows"] == r["published_distinct"]
        and not r["process_exits"]
        for r in runs
    )
    return {
        "suite": "scaleout",
        "source": {"tree": options.source, "commit": commit},
        "handler": lane.handler,
        "handler_kind": handler_kind(source, lane.handler),
        "topic": USERS.name,
        "partitions": USERS.partitions,
        "events": options.events,
        "users": options.users,
        "duplicate_ratio": options.duplicate_ratio,
        "cpus": os.cpu_count(),
        # Anything else running on the machine shares its CPUs with the service, Kafka and PostgreSQL.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "table": table,
        "runs": runs,
        "ok": ok,
        "duration_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> ScaleOptions:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,3", help="comma-separated consumer process counts")
    parser.add_argument("--events", type=int, default=600_000, help="distinct events in each backlog")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--duplicates", type=float, default=0.01, help="share of events published twice")
    parser.add_argument("--stagger", type=float, default=5.0, help="seconds between process starts")
    parser.add_argument("--kill-at", type=float, default=0.85, help="backlog share handled at the SIGKILL")
    parser.add_argument("--restart-after", type=float, default=2.0, help="seconds from SIGKILL to restart")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    add_service_arguments(parser, database="dianabot_scale", processes="processes")
    a = parser.parse_args(argv)
    return ScaleOptions(
        processes=tuple(int(n) for n in a.processes.split(",")),
        events=a.events,
        users=a.users,
        duplicate_ratio=a.duplicates,
        stagger_s=a.stagger,
        kill_at=a.kill_at,
        restart_after_s=a.restart_after,
        drain_timeout_s=a.drain_timeout,
        bootstrap_servers=a.kafka,
        database_url=a.database_url,
        database=a.database,
        source=a.source,
        log_level=a.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    return run_and_print(scaleout(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
