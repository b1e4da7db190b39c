"""Telegram delivery benchmark: a broadcast to N recipients through real consumer processes and the double.

The bench process runs the Bot API double (limits: the configured global rate * 1.2, 1/s per
private chat, 20/min per group), creates N users, starts P consumer processes
(``faststream run bench.telegram:app``: the notification and broadcast handlers with the
TelegramSender, as the service runs them), publishes one ``broadcast.requested`` for the N users and,
while it is sending, one critical notification every ``--critical-every`` seconds. It reports:

* ``achieved_rate_per_s`` / ``rate_fraction``: messages delivered per second over the broadcast's
  span, as a fraction of the configured rate (target >= 0.95);
* ``violations`` (target 0) and ``retry_after_ignored``: what the double counted;
* ``duplicates``: recipients that got the broadcast more than once (target 0); ``unknown``: sends
  recorded as unknown;
* ``critical_delay_s``: from publishing a critical notification to the double receiving it
  (p50 / p99 / max; target p99 <= 2 s).

Prints one JSON object. Run: ``python -m bench.telegram`` (10,000 recipients at the default 25/s
against a double enforcing Telegram's 30/s: about 7 minutes; part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from faststream import FastStream
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import broadcasts, notifications
from consumers.app import create_app
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import BroadcastRequested, MessageContent, NotificationRequested, Priority
from dianabot_contracts.topics import TopicSpec
from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.kafka import admin_client, create_broker
from dianabot_core.logs import configure_logging
from dianabot_core.models import User
from dianabot_core.publisher import EventPublisher
from dianabot_core.runtime import settings_or_exit
from dianabot_core.settings import Settings, load_settings
from dianabot_core.telegram.broadcasts import broadcast_progress
from dianabot_core.telegram.sender import TelegramSender
from dianabot_core.telegram.settings import SenderSettings
from dianabot_double import GROUP_LIMIT, PRIVATE_CHAT_LIMIT, RateLimit, TelegramDouble

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6

# --- the consumer process ------------------------------------------------------------------------


@cache
def _app() -> FastStream:
    def topic(variable: str) -> TopicSpec:
        return TopicSpec(name=os.environ[variable], partitions=PARTITIONS, key="bench")

    module = os.environ["BENCH_MODULE"]
    critical, bulk = topic("BENCH_CRITICAL"), topic("BENCH_BULK")
    groups = [
        notifications.build_handlers(critical=critical, bulk=bulk, module=f"{module}n"),
        broadcasts.build_handlers(
            broadcasts=topic("BENCH_BROADCASTS"), critical=critical, bulk=bulk, module=f"{module}b"
        ),
    ]
    settings = settings_or_exit()
    sender = TelegramSender.create(settings)
    return create_app(settings, groups=groups, services=Services(telegram=sender))  # it closes the sender


def __getattr__(name: str) -> FastStream:
    if name == "app":
        return _app()
    raise AttributeError(name)


# --- the benchmark -------------------------------------------------------------------------------


def _start_consumer(
    settings: Settings, run: str, base_url: str, rate: float, token: str, log: Path | None, metrics_port: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(
        BENCH_CRITICAL=f"bench.tg.{run}.critical",
        BENCH_BULK=f"bench.tg.{run}.bulk",
        BENCH_BROADCASTS=f"bench.tg.{run}.broadcasts",
        BENCH_MODULE=f"bench{run}",
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        DIANABOT_DATABASE__URL=settings.database.url.get_secret_value(),
        DIANABOT_TELEGRAM__BOT_TOKEN=token,
        DIANABOT_TELEGRAM__API_BASE_URL=base_url,
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_TELEMETRY__LOG_LEVEL=os.environ.get("BENCH_CONSUMER_LOG_LEVEL", "WARNING"),
        # Several processes on one host: no health server, unless asked for (port base + process).
        DIANABOT_TELEMETRY__HTTP_PORT=str(metrics_port),
        DIANABOT_SENDER__GLOBAL_RATE_PER_S=str(rate),
    )
    output = subprocess.DEVNULL if log is None else log.open("wb")
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("faststream")), "run", "bench.telegram:app"],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


async def _create_users(factory: async_sessionmaker[AsyncSession], count: int) -> list[tuple[int, int]]:
    base = random.randrange(10**11, 9 * 10**11)
    users: list[tuple[int, int]] = []
    async with factory() as session, session.begin():
        for start in range(0, count, 5000):
            rows = [
                {"telegram_id": base + i, "language_code": "es"}
                for i in range(start, min(count, start + 5000))
            ]
            result = await session.execute(insert(User).values(rows).returning(User.id, User.telegram_id))
            users += [(r[0], r[1]) for r in result]
    return users


async def _declare(settings: Settings, run: str) -> None:
    admin = admin_client(settings.kafka, "bench")
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"bench.tg.{run}.{lane}", num_partitions=PARTITIONS, replication_factor=1)
                for lane in ("critical", "bulk", "broadcasts")
            ]
        )
    finally:
        await admin.close()


async def _wait_for_members(settings: Settings, group: str, count: int, within: float = 120) -> None:
    admin = admin_client(settings.kafka, "bench")
    await admin.start()
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                [response] = await admin.describe_consumer_groups([group])
                [description] = response.to_object()["groups"]
                if len(description["members"]) == count and description["state"] == "Stable":
                    return
            except Exception:  # the group does not exist yet
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{group} did not reach {count} members within {within}s")
    finally:
        await admin.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class GcPauses:
    """Collector pauses of this process (where the double runs): a pause holds back arrivals and
    then stamps them together, which the double would count against the sender."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses.append((self._started, time.monotonic() - self._started, info["generation"]))

    def longest_ms(self) -> float:
        return round(max((p for _, p, _ in self.pauses), default=0.0) * 1000, 1)


async def _save_metrics(ports: list[int], into: Path) -> None:
    """Each consumer's /metrics at the end of the run, next to its log (slot waits, handler times)."""
    async with aiohttp.ClientSession() as http:
        for i, port in enumerate(ports):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                (into / f"consumer-{i}.metrics").write_text(await response.text())


async def _freeze_periodically(every_s: float) -> None:
    while True:
        gc.freeze()
        await asyncio.sleep(every_s)


def _write_lines(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine skews the timings
    settings = load_settings()
    engine = create_engine(settings.database)
    factory = create_session_factory(engine)
    run_id = uuid.uuid4().hex[:8]
    double_rate = args.double_rate or int(args.rate * 1.2)
    double = TelegramDouble(
        global_limit=RateLimit(double_rate, 1.0),
        private_chat_limit=PRIVATE_CHAT_LIMIT,
        group_limit=GROUP_LIMIT,
        max_request_records=None,
    )
    base_url = await double.start("127.0.0.1", 0)
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    # The double stands in for Telegram's servers, which our garbage collector does not pause: a
    # full collection over its growing request records held arrivals back ~250 ms and then stamped
    # them together, which it counted as our bursts. Freezing what exists keeps collections short.
    freezer = asyncio.create_task(_freeze_periodically(1.0))
    recipients = await _create_users(factory, args.recipients)
    alerted = await _create_users(factory, args.critical_users)
    await _declare(settings, run_id)
    # One bot (one token) for every process: the limits are per bot. A fresh bot id per run keeps
    # runs from sharing limiter rows.
    token = f"{random.randrange(10**6, 10**7)}:bench"
    logs = [
        None if args.logs is None else Path(args.logs) / f"consumer-{i}.log" for i in range(args.processes)
    ]
    ports = [args.metrics_port_base + i if args.metrics_port_base else 0 for i in range(args.processes)]
    processes = [
        _start_consumer(settings, run_id, base_url, args.rate, token, log, port)
        for log, port in zip(logs, ports, strict=True)
    ]
    broker = create_broker(settings.kafka)
    await broker.start()
    publisher = EventPublisher(broker, "bench")
    progress = None
    try:
        await _wait_for_members(settings, f"dianabot.bench{run_id}n.send.bulk", args.processes)
        await _wait_for_members(settings, f"dianabot.bench{run_id}n.send.critical", args.processes)
        broadcast_id = f"bench-{run_id}"
        started = time.time()
        await _publish(
            publisher,
            f"bench.tg.{run_id}.broadcasts",
            BroadcastRequested(
                broadcast_id=broadcast_id,
                audience="list",
                user_ids=tuple(u for u, _ in recipients),
                content=MessageContent(text="¡Nueva temporada!"),
            ),
        )
        observer = KafkaObserver(settings, f"bench.tg.{run_id}.critical")
        await observer.start()
        critical_sent = await _inject_critical(
            publisher, f"bench.tg.{run_id}.critical", alerted, double, len(recipients), args, observer
        )
        await _wait_delivered(double, len(recipients) + len(critical_sent), args.timeout, processes)
        await observer.stop()
        if args.metrics_port_base and args.logs:
            await _save_metrics(ports, Path(args.logs))
        finished = time.time()
        async with factory() as session:
            progress = await broadcast_progress(session, broadcast_id)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        await broker.stop()
        await double.stop()
    result = _report(double, recipients, alerted, critical_sent, args, double_rate, finished - started)
    if args.dump_requests:
        _write_lines(
            args.dump_requests,
            [
                {"seq": r.seq, "t": r.monotonic, "method": r.method, "chat_id": r.chat_id, "status": r.status}
                for r in double.requests
            ],
        )
    result["broadcast_progress"] = progress.as_dict() if progress else None
    freezer.cancel()
    result["load_average_1m_at_start"] = load_at_start
    hops = observer.delays
    result["critical_kafka_hop_s"] = {  # publish -> readable by a consumer, measured by the bench
        "count": len(hops),
        "p50": round(_percentile(hops, 0.5), 3) if hops else None,
        "p99": round(_percentile(hops, 0.99), 3) if hops else None,
        "max": round(max(hops), 3) if hops else None,
    }
    result["double_gc_pauses"] = {
        "count": len(gc_pauses.pauses),
        "over_50ms": sum(1 for _, p, _ in gc_pauses.pauses if p > 0.05),
        "longest_ms": gc_pauses.longest_ms(),
    }
    if args.dump_requests:
        _write_lines(f"{args.dump_requests}.gc", [{"t": t, "s": s, "gen": g} for t, s, g in gc_pauses.pauses])
    async with factory() as session, session.begin():
        ids = [u for u, _ in recipients + alerted]
        for start in range(0, len(ids), 5000):
            await session.execute(delete(User).where(User.id.in_(ids[start : start + 5000])))
    await engine.dispose()
    return result


async def _publish(publisher: EventPublisher, topic: str, payload: Any) -> EventEnvelope:
    envelope = EventEnvelope.wrap(payload, producer="bench")
    await publisher.publish_envelope(envelope, topic)
    return envelope


class KafkaObserver:
    """Reads the critical topic as a consumer would (no group, from the end): how much of a
    critical message's delay is the broker's hop, and how much is the consumers' own."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, fetch_max_wait_ms=100
        )
        self._topic = topic
        self._published: dict[str, float] = {}
        self.delays: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        partitions = [TopicPartition(self._topic, p) for p in range(PARTITIONS)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        self._task = asyncio.create_task(self._read())

    def expect(self, event_id: str, published_at: float) -> None:
        self._published[event_id] = published_at

    async def _read(self) -> None:
        async for record in self._consumer:
            event_id = json.loads(record.value or b"{}").get("event_id")
            at = self._published.get(str(event_id))
            if at is not None:
                self.delays.append(time.time() - at)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()


async def _inject_critical(
    publisher: EventPublisher,
    topic: str,
    alerted: list[tuple[int, int]],
    double: TelegramDouble,
    broadcast_size: int,
    args: argparse.Namespace,
    observer: KafkaObserver,
) -> dict[int, float]:
    """One critical notification every `critical_every` s while the broadcast is under way."""
    published: dict[int, float] = {}
    while len(double.messages) < min(20, broadcast_size):
        await asyncio.sleep(0.05)
    for user_id, chat_id in alerted:
        if len(double.messages) - len(published) >= broadcast_size - 20:
            break  # the broadcast is ending: a delay measured now would not be "during" it
        published[chat_id] = time.time()
        envelope = await _publish(
            publisher,
            topic,
            NotificationRequested(
                user_id=user_id, content=MessageContent(text="Pago recibido"), priority=Priority.CRITICAL
            ),
        )
        observer.expect(str(envelope.event_id), published[chat_id])
        await asyncio.sleep(args.critical_every)
    return published


async def _wait_delivered(
    double: TelegramDouble, expected: int, within_s: float, processes: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + within_s
    while len(double.messages) < expected:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a consumer process exited during the run (see --logs)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(double.messages)} of {expected} messages within {within_s}s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a late duplicate would show now


def _report(
    double: TelegramDouble,
    recipients: list[tuple[int, int]],
    alerted: list[tuple[int, int]],
    critical_sent: dict[int, float],
    args: argparse.Namespace,
    double_rate: int,
    wall_s: float,
) -> dict[str, Any]:
    messages = double.messages
    per_chat = Counter(m.chat_id for m in messages)
    broadcast_chats = {chat for _, chat in recipients}
    times = sorted(m.monotonic for m in messages)
    span = times[-1] - times[0]
    first_critical = min(critical_sent.values(), default=0.0)
    timed = [
        (at - first_critical, next(m.sent_at for m in messages if m.chat_id == chat) - at)
        for chat, at in critical_sent.items()
        if per_chat[chat]
    ]
    delays = [delay for _, delay in timed]
    stats = double.stats()
    achieved = (len(messages) - 1) / span if span > 0 else 0.0
    return {
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "recipients": len(recipients),
        "processes": args.processes,
        "configured_rate_per_s": args.rate,
        "double_global_limit_per_s": double_rate,
        "delivered": len(messages),
        "broadcast_delivered": sum(1 for c in broadcast_chats if per_chat[c]),
        "critical_injected": len(critical_sent),
        "critical_delivered": len(delays),
        "span_s": round(span, 2),
        "wall_s": round(wall_s, 2),
        "achieved_rate_per_s": round(achieved, 2),
        "rate_fraction": round(achieved / args.rate, 3),
        "max_rate_1s": stats["max_global_rate_1s"],
        "max_private_chat_rate_1s": stats["max_private_chat_rate_1s"],
        "violations": stats["violations"],
        "violations_total": stats["violations_total"],
        "retry_after_ignored": stats["retry_after_ignored"],
        "duplicates": sum(1 for c in broadcast_chats if per_chat[c] > 1),
        "critical_delay_s": {
            "p50": round(statistics.median(delays), 3) if delays else None,
            "p99": round(_percentile(delays, 0.99), 3) if delays else None,
            "max": round(max(delays), 3) if delays else None,
            # When the slowest ones were published (seconds into the injection): a cluster points
            # at a cause (start-up, a fan-out step, a pause), a spread at steady-state queueing.
            "slowest": [[round(t, 1), round(d, 3)] for t, d in sorted(timed, key=lambda x: -x[1])[:8]],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=SenderSettings().global_rate_per_s,
        help="the sender's global rate (messages/s); default: the production default",
    )
    parser.add_argument("--double-rate", type=int, default=0, help="the double's limit; default rate * 1.2")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--critical-users", type=int, default=400)
    parser.add_argument("--critical-every", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--logs", help="a directory for the consumer processes' output")
    parser.add_argument(
        "--metrics-port-base",
        type=int,
        default=0,
        help="serve each consumer's /metrics on base + i (with --logs)",
    )
    parser.add_argument("--dump-requests", help="a file for every request the double saw (JSON lines)")
    args = parser.parse_args()
    configure_logging("WARNING", json_lines=False)
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
