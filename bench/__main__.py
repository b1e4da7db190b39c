"""Every benchmark of the service in one run, one JSON object, each target next to its figure.

    python -m bench            # what `make bench` runs (about an hour: the soak is 1,000,000 events)
    python -m bench --quick    # the same phases with smaller counts (a few minutes each)

Phases, one after another on the devstack's Kafka and PostgreSQL (nothing else should run on them):
1. ``bench.pipeline``: one consumer alone, raw aiokafka loop vs the pipeline's batch and per-event
   handlers (throughput over a backlog, publish-to-commit latency at a fixed rate);
2. ``bench.celery_peer``: the Celery 5 + Redis design this service replaces, same ledger + effect
   transaction per task, 2 prefork workers, ``acks_late``;
3. ``bench.service``: the real consumers process (every handler registered): idle CPU and memory,
   drain rates of ``user.activity``, a subscription event and notifications, latency through it;
4. ``bench.scaleout``: 1, 2 and 3 consumer processes on 6-partition topics, with rebalances;
5. ``bench.soak``: a long run's resident memory, sampled every 10 s.
The ``summary`` compares each figure with its target from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bench import celery_peer, pipeline, scaleout, soak
from bench.service import run_service_bench
from dianabot_core.logs import configure_logging
from dianabot_core.settings import load_settings

# The per-event handler's throughput before this work (issue figure, same machine): the baseline
# of "per-event at least 3x faster".
PER_EVENT_BEFORE_EVENTS_PER_S = 1784.0


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    single = results["pipeline"]
    service = results["service"]["service"]
    celery = results["celery"]["throughput_tasks_per_s"]
    activity = service["drain_events_per_s"]["user.activity"]
    per_event = single["pipeline_per_event_handler"]["throughput_events_per_s"]
    latency = service["latency_ms"]
    checks = {
        "service_user_activity_over_celery": (activity / celery, ">=", 3.0),
        "batch_over_raw_aiokafka": (single["throughput_ratio"], ">=", 0.8),
        "per_event_over_before": (per_event / PER_EVENT_BEFORE_EVENTS_PER_S, ">=", 3.0),
        "idle_cpu_percent_of_core": (service["idle"]["idle_cpu_percent_of_core"], "<=", 3.0),
        "batch_path_p99_ms_at_1000_per_s": (latency["user.activity"]["p99"], "<=", 50.0),
        "per_event_p99_ms_at_1000_per_s": (latency["user.registered"]["p99"], "<=", 100.0),
        "soak_rss_growth_percent": (results["soak"]["memory"]["growth_percent"], "<=", 10.0),
    }
    summary: dict[str, Any] = {
        name: {"value": round(value, 3), "target": f"{op} {target:g}", "met": _met(value, op, target)}
        for name, (value, op, target) in checks.items()
    }
    summary["ours_over_raw_aiokafka_batch"] = single["throughput_ratio"]
    summary["ours_over_celery_user_activity"] = round(activity / celery, 2)
    summary["scaleout"] = results["scaleout"]["table"]
    return summary


def _met(value: float, op: str, target: float) -> bool:
    return value >= target if op == ">=" else value <= target


async def run(quick: bool) -> dict[str, Any]:
    settings = load_settings()
    database_url = settings.database.url.get_secret_value()
    events = 5_000 if quick else 20_000
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}

    async def phase(name: str, work: Any) -> None:
        started = time.monotonic()
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        results[name] = await work
        timings[name] = round(time.monotonic() - started, 1)

    await phase("pipeline", pipeline.main(events, rate=1000.0, seconds=10.0))
    await phase("celery", celery_peer.run_celery_peer(database_url, events, 2_000))
    await phase("service", run_service_bench(settings, events=events, idle_seconds=30 if quick else 60))
    kafka = settings.kafka.bootstrap_servers
    await phase(
        "scaleout",
        scaleout.scaleout(
            scaleout.ScaleOptions(
                events=60_000 if quick else 600_000, bootstrap_servers=kafka, database_url=database_url
            )
        ),
    )
    await phase(
        "soak",
        soak.soak(
            soak.SoakOptions(
                events=100_000 if quick else 1_000_000, bootstrap_servers=kafka, database_url=database_url
            )
        ),
    )
    return {"summary": _summary(results), **results, "seconds": timings, "quick": quick}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts in every phase")
    args = parser.parse_args(argv)
    configure_logging("WARNING", json_lines=True)
    print(json.dumps(asyncio.run(run(args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
