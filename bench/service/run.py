"""One run: a fresh database, the consumers process started once, then idle, drains and latency."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.chaos import database, groups, readback
from bench.chaos.cluster import REPO, Cluster, free_port
from bench.chaos.run import double_state, prepare_source
from bench.chaos.topology import service_lanes
from bench.service import process, traffic
from bench.service.ledger import (
    NotExactlyOnceError,
    Phase,
    handled,
    require_commit_timestamps,
    wait_handled,
)
from bench.service.traffic import Make, Publisher, Sent, Sizes
from consumers.registry import HANDLER_GROUPS
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import DEAD_LETTERS, TOPICS
from dianabot_core.pipeline.handlers import HandlerSpec
from dianabot_core.settings import Settings
from dianabot_core.telegram.settings import SenderSettings

logger = logging.getLogger("bench.service")
LOGS = REPO / ".devstack/bench/service"
TARGETS = {
    "idle_cpu_percent_of_core": 3.0,
    "latency_p99_ms_batch_handler": 50.0,
    "latency_p99_ms_per_event_handler": 100.0,
}


def handler_taking(event_type: str) -> HandlerSpec[Any]:
    found = [spec for group in HANDLER_GROUPS for spec in group.specs if event_type in spec.event_types]
    if len(found) != 1:
        raise RuntimeError(f"expected one handler of {event_type}, found {[s.name for s in found]}")
    return found[0]


def kind_of(spec: HandlerSpec[Any]) -> str:
    return "batch" if spec.batch else "per-event"


class Bench:
    """The phases' shared parts: publish, wait for the handler's ledger, read it back."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, cluster: Cluster, publisher: Publisher
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.cluster = cluster
        self.publisher = publisher

    def alive(self) -> None:
        process.consumer_process(self.cluster)

    async def wait(self, consumer: str, total: int, within_s: float) -> None:
        try:
            await wait_handled(self.engine, consumer, total, within_s, self.alive)
        except RuntimeError as error:
            if foreign := await process.foreign_members(self.settings.kafka):
                raise RuntimeError(f"{error}; other consumers took partitions: {foreign}") from error
            raise

    async def drain(self, event_type: str, make: Make, count: int, within_s: float) -> tuple[Phase, Sent]:
        """Publish `count` events at once, wait until the handler has them all in its ledger."""
        spec = handler_taking(event_type)
        before = await handled(self.engine, spec.name)
        sent = await self.publisher.backlog(make, count)
        await self.wait(spec.name, before + count, within_s)
        return await Phase.read(self.engine, spec.name, sent.payloads, before), sent

    async def latency(self, event_type: str, make: Make, rate: float, seconds: float) -> tuple[Phase, Sent]:
        spec = handler_taking(event_type)
        before = await handled(self.engine, spec.name)
        sent = await self.publisher.paced(make, rate, seconds)
        count = len(sent.payloads)
        await self.wait(spec.name, before + count, max(120, count / 50))
        return await Phase.read(self.engine, spec.name, sent.payloads, before), sent


def drain_report(event_type: str, phase: Phase, sent: Sent) -> dict[str, Any]:
    spec = handler_taking(event_type)
    return {
        "handler": spec.name,
        "kind": kind_of(spec),
        **phase.drain(),
        "published_in_s": round(sent.seconds, 2),
    }


def latency_report(event_type: str, phase: Phase, sent: Sent) -> dict[str, Any]:
    spec = handler_taking(event_type)
    return {
        **phase.latency_ms(sent.published_at),
        "rate_per_s": round(len(sent.payloads) / sent.seconds, 1),
        "handler": spec.name,
        "kind": kind_of(spec),
        "target_p99_ms": TARGETS[f"latency_p99_ms_{kind_of(spec).replace('-', '_')}_handler"],
    }


# --- the effects, beyond the ledger --------------------------------------------------------------


async def check_effects(
    engine: AsyncEngine, sent: dict[str, list[Sent]], sizes: Sizes, double: dict[str, Any]
) -> dict[str, Any]:
    """The handlers' own effects agree with what was published, and none of the bench's records
    was dead-lettered; raises otherwise. Records of others on the same topics (tests publishing to
    the dev topics) are counted apart: the process handled or dead-lettered them too."""
    latest: dict[int, datetime] = {}
    for phase in sent["user.activity"]:
        for payload in phase.payloads.values():
            assert isinstance(payload, UserActivity)
            latest[payload.user_id] = max(payload.at, latest.get(payload.user_id, payload.at))
    registered = sum(len(phase.payloads) for phase in sent["user.registered"])
    ours = {position for phases in sent.values() for phase in phases for position in phase.positions}
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, last_active_at FROM users WHERE id BETWEEN :low AND :high"),
            {"low": traffic.ACTIVITY_USERS + 1, "high": traffic.ACTIVITY_USERS + sizes.activity_users},
        )
        wrong_activity = sum(1 for user, at in rows if at != latest.get(user))
        created = await connection.scalar(
            text("SELECT count(*) FROM users WHERE id BETWEEN :low AND :high"),
            {"low": traffic.REGISTERED_USERS + 1, "high": traffic.REGISTERED_USERS + registered},
        )
        kicked = await connection.scalar(
            text("SELECT count(*) FROM subscriptions WHERE kicked_from_channel_at IS NOT NULL")
        )
        letters = (
            await connection.execute(text('SELECT topic, partition, "offset" FROM dead_letter_records'))
        ).all()
    texts = [m.get("text") or "" for m in double["messages"]]
    notified = [t for t in texts if t.startswith(traffic.NOTIFICATION_TEXT)]
    our_letters = sum(1 for letter in letters if tuple(letter) in ours)
    found = {
        "users_with_wrong_last_active_at": wrong_activity,
        "users_registered": int(created or 0),
        "subscriptions_kicked": int(kicked or 0),
        "ban_calls": sum(double["stats"]["by_method"].get("banChatMember", {}).values()),
        "notifications_delivered": len(notified),
        "notifications_delivered_distinct": len(set(notified)),
        "dead_letters": our_letters,
    }
    expected = {
        "users_with_wrong_last_active_at": 0,
        "users_registered": registered,
        "subscriptions_kicked": 0,
        "ban_calls": 0,
        "notifications_delivered": sizes.notifications,
        "notifications_delivered_distinct": sizes.notifications,
        "dead_letters": 0,
    }
    if found != expected:
        raise NotExactlyOnceError(
            f"effects differ from the published events: found {found}, expected {expected}"
        )
    return {**found, "foreign_records_dead_lettered": len(letters) - our_letters}


# --- the run -------------------------------------------------------------------------------------


def _log_dir() -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)[10:]:
        shutil.rmtree(old, ignore_errors=True)
    logs = LOGS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs.mkdir()
    return logs


def _uncommitted() -> bool:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    )
    return bool(status.stdout.strip())


async def records_on_service_topics(settings: Settings) -> int:
    """The sum of the end offsets of every topic the service reads (retry topics aside)."""
    names = [topic.name for topic in TOPICS if topic.name != DEAD_LETTERS.name]
    return sum((await readback.end_offsets(settings.kafka, readback.partitions_of(names))).values())


async def run_service_bench(
    settings: Settings,
    *,
    events: int = 20_000,
    users: int = 2_000,
    renewals: int = 3_000,
    notifications: int = 600,
    settle_seconds: float = 15.0,
    idle_seconds: float = 60.0,
    rate: float = 1000.0,
    per_event_rate: float = 100.0,
    seconds: float = 20.0,
    database_name: str = "dianabot_bench_service",
    source: str = "worktree",
    log_level: str = "WARNING",
) -> dict[str, Any]:
    """Measure one ``faststream run consumers.app:app`` process with every handler's consumers:
    idle CPU and memory, drain rates of three kinds of backlog, publish-to-commit latency at `rate`.

    `source` is the tree the process runs from: ``worktree`` (as ``make bench``) or ``head`` (a
    snapshot of the last commit). Raises ``NotExactlyOnceError`` when an event is not handled
    exactly once or an effect is missing, ``RuntimeError`` when the process exits or a phase does
    not finish in time. Kafka's consumer groups of the service are moved to the end of their topics
    first, so nothing else may be consuming them meanwhile (``make run``, ``make chaos``, tests that
    run ``consumers.app`` on the dev Kafka): a process that joins takes partitions, and events, away.
    """
    started, load_at_start = time.monotonic(), os.getloadavg()
    sizes = Sizes(activity_users=users, renewed_users=renewals, notifications=notifications)
    lanes = service_lanes()
    tree, commit = prepare_source(source)
    url = await database.recreate(settings.database.url.get_secret_value(), database_name)
    await database.migrate(url, tree)
    await traffic.load_fixtures(url, sizes)
    await groups.declare(settings.kafka, lanes)
    await groups.skip_to_end(settings.kafka, lanes)

    logs = _log_dir()
    port = free_port()
    config = process.BenchServiceConfig(
        tree, logs, settings.kafka.bootstrap_servers, url, log_level=log_level, health_port=port
    )
    cluster = Cluster(config, consumer_count=1, scheduler_count=0)
    engine = create_async_engine(url)
    publisher = Publisher(settings.kafka)
    bench = Bench(settings, engine, cluster, publisher)
    try:
        await require_commit_timestamps(engine)
        await cluster.start()
        await publisher.start()
        ready = await process.wait_ready(cluster, settings.kafka, port)
        logger.warning(
            "bench.service: %d consumer groups joined in %.0fs",
            ready["consumer_groups"],
            ready["groups_stable_s"],
        )

        await _sleep(settle_seconds, bench)
        records_before = await records_on_service_topics(settings)
        idle = await process.sample_idle(cluster, idle_seconds)
        # Idle means idle: records someone else published meanwhile are work the process did.
        idle["records_arrived_in_window"] = await records_on_service_topics(settings) - records_before
        logger.warning("bench.service: idle %.1f%% of a core", idle["idle_cpu_percent_of_core"])

        activity_make = traffic.activity(random.Random(1), sizes)
        drains = {
            "user.activity": await bench.drain(
                "user.activity", activity_make, events, max(120, events / 100)
            ),
            "subscription.expired": await bench.drain(
                "subscription.expired", traffic.expiries, renewals, max(120, renewals / 50)
            ),
            "notification.requested": await bench.drain(
                "notification.requested",
                traffic.notifications(sizes),
                notifications,
                max(180, notifications / 5),
            ),
        }
        logger.warning("bench.service: drains done; latency at %g/s for %gs", rate, seconds)
        latencies = {
            "user.activity": await bench.latency("user.activity", activity_make, rate, seconds),
            "user.registered": await bench.latency(
                "user.registered", traffic.registrations(0), rate, seconds
            ),
        }
        # At `rate` a per-event handler may not keep up (its latency is then queueing): once more
        # at a rate it can sustain.
        registered = len(latencies["user.registered"][1].payloads)
        latencies[f"user.registered@{per_event_rate:g}/s"] = await bench.latency(
            "user.registered", traffic.registrations(registered), per_event_rate, seconds
        )
        rss_after = process.rss_mb(process.process_tree(process.consumer_process(cluster).pid))
        messages, stats = await double_state(cluster.base_url)
        sent: dict[str, list[Sent]] = {}
        for name, (_, phase_sent) in [*drains.items(), *latencies.items()]:
            sent.setdefault(name.split("@")[0], []).append(phase_sent)
        effects = await check_effects(engine, sent, sizes, {"messages": messages, "stats": stats})
    finally:
        await publisher.stop()
        await cluster.stop_service()
        await cluster.stop_double()
        await engine.dispose()

    drain = {name: drain_report(name, *result) for name, result in drains.items()}
    drain["notification.requested"].update(_telegram_limits(stats))
    return {
        "service": {
            "idle": {
                "settle_s": settle_seconds,
                **idle,
                "target_cpu_percent_of_core": TARGETS["idle_cpu_percent_of_core"],
            },
            "drain_events_per_s": {name: report["events_per_s"] for name, report in drain.items()},
            "drain": drain,
            "latency_ms": {
                name: latency_report(name.split("@")[0], *result) for name, result in latencies.items()
            },
            "startup": ready,
            "rss_mb_after_load": round(rss_after, 1),
            "effects": effects,
            "exactly_once": True,
        },
        "consumers_in_process": ready["consumer_groups"],
        "source": {
            "tree": source,
            "commit": commit,
            "uncommitted_changes": source == "worktree" and _uncommitted(),
        },
        "load_average_at_start": [round(v, 2) for v in load_at_start],
        "cpus": os.cpu_count(),
        "logs": str(logs),
        "duration_s": round(time.monotonic() - started, 1),
    }


def _telegram_limits(stats: dict[str, Any]) -> dict[str, Any]:
    """The notification drain's rate is Telegram's limit, not the pipeline's: the two side by side."""
    limit = stats["limits"]["global"]
    return {
        "sender_global_rate_per_s": SenderSettings.model_fields["global_rate_per_s"].default,
        "double_global_limit_per_s": None if limit is None else limit["count"] / limit["window_s"],
        "double_max_global_rate_1s": stats.get("max_global_rate_1s"),
        "double_limit_violations": stats.get("violations_total"),
    }


async def _sleep(seconds: float, bench: Bench) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        bench.alive()
        await asyncio.sleep(min(1.0, left))
