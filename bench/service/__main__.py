"""``python -m bench.service``: one run of the service benchmark; prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bench.service import run_service_bench
from dianabot_core.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="user.activity backlog to drain")
    parser.add_argument("--users", type=int, default=2_000, help="users the activity events are spread over")
    parser.add_argument("--renewals", type=int, default=3_000, help="subscription.expired backlog to drain")
    parser.add_argument("--notifications", type=int, default=600, help="notification.requested backlog")
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="wait after start-up before idle")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="the idle sampling window")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency phases")
    parser.add_argument(
        "--per-event-rate", type=float, default=100.0, help="events/s of the second user.registered phase"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each latency phase")
    parser.add_argument("--database", default="dianabot_bench_service", help="dropped and created per run")
    parser.add_argument(
        "--source",
        choices=("worktree", "head"),
        default="worktree",
        help="run the service from the working tree (default) or a snapshot of HEAD",
    )
    parser.add_argument("--log-level", default="WARNING", help="the service process's log level")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    report = asyncio.run(
        run_service_bench(
            load_settings(),
            events=a.events,
            users=a.users,
            renewals=a.renewals,
            notifications=a.notifications,
            settle_seconds=a.settle_seconds,
            idle_seconds=a.idle_seconds,
            rate=a.rate,
            per_event_rate=a.per_event_rate,
            seconds=a.seconds,
            database_name=a.database,
            source=a.source,
            log_level=a.log_level,
        )
    )
    print(json.dumps(report, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
