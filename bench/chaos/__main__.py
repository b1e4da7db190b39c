"""``python -m bench.chaos``: one chaos run; prints one JSON line, exits 1 when a target is missed."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bench.chaos.run import Options, run


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="everything published and every fault follows it")
    parser.add_argument("--events", type=int, default=20_000, help="valid records, duplicates included")
    parser.add_argument("--fuzz", type=int, default=1_000, help="hostile records")
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of events published twice")
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes")
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs of consumer processes")
    parser.add_argument("--publish-seconds", type=float, default=300, help="how long publishing lasts")
    parser.add_argument("--pg-outage-seconds", type=float, default=30)
    parser.add_argument("--drain-timeout", type=float, default=600, help="seconds to wait for the drain")
    parser.add_argument("--budget", type=float, default=1140, help="the whole run's limit in seconds")
    parser.add_argument("--database", default="dianabot_chaos", help="dropped and created for each run")
    parser.add_argument(
        "--source",
        choices=("head", "worktree"),
        default="head",
        help="run the service from a snapshot of HEAD (default) or from the working tree",
    )
    parser.add_argument("--log-level", default="WARNING", help="the service processes' log level")
    parser.add_argument(
        "--skip-faults",
        default="",
        help="comma-separated fault kinds not to do (development): consumer_kill, "
        "scheduler_leader_kill, postgres_outage, kafka_restart",
    )
    a = parser.parse_args(argv)
    return Options(
        seed=a.seed,
        events=a.events,
        fuzz=a.fuzz,
        duplicate_ratio=a.duplicates,
        consumers=a.consumers,
        kills=a.kills,
        publish_s=a.publish_seconds,
        pg_outage_s=a.pg_outage_seconds,
        drain_timeout_s=a.drain_timeout,
        budget_s=a.budget,
        database=a.database,
        source=a.source,
        log_level=a.log_level,
        skip_faults=frozenset(k.strip() for k in a.skip_faults.split(",") if k.strip()),
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    report = asyncio.run(run(options))
    print(json.dumps(report, separators=(",", ":"), default=str), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
