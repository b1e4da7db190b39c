"""Celery peer benchmark: a Celery 5 + Redis worker doing our ``user.activity`` handler's work per task.

What it measures: tasks/s of a Celery worker (prefork pool, 2 processes, late acks, Redis broker,
JSON messages, Celery's default prefetch) draining a backlog. Each task does in ONE PostgreSQL
transaction, with a synchronous driver (psycopg) and one connection per worker process, what our
``users.record_activity`` handler does for one event: claim the event id in the processed-events
ledger (the effect is skipped when it was claimed already), then move ``users.last_active_at``
forward (consumers/users.py, same SQL as SQLAlchemy emits for it).

How: a database of its own (``dianabot_bench_celery``, dropped, created and migrated on every run)
gets USERS users; EVENTS tasks (user ids spread over the users) are put on a Redis queue of the run's
own while no worker runs; then ``celery worker --pool prefork --concurrency 2`` starts, and
tasks/s = EVENTS / (time from the first ledger row written to the last). Each ledger row stores
``clock_timestamp()`` of its insert, the same definition bench/pipeline.py uses for its effects, so
worker start-up is counted on neither side. The run fails unless every event id is in the ledger
exactly once and every user's ``last_active_at`` is the time of its latest event. The database
stays for a look afterwards (the next run drops it); the worker's output is in WORKER_LOG.

Run: ``devstack/redis/redis.sh up && . devstack/local.env && python -m bench.celery_peer`` (one JSON
object). ``run_celery_peer`` (async) is the same measurement for another bench module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.chaos.database import migrate, recreate
from dianabot_core.models import User
from dianabot_core.settings import load_settings

REDIS_URL = os.environ.get("DIANABOT_BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
# The worker learns its database from the measurement that starts it.
DATABASE_URL_ENV = "DIANABOT_BENCH_CELERY_DATABASE_URL"
DATABASE = "dianabot_bench_celery"
CONSUMER = "celery.users.record_activity"
EVENT_TYPE = "user.activity"
WORKERS = 2
REPO = Path(__file__).resolve().parents[1]
WORKER_LOG = REPO / ".devstack" / "bench-celery" / "worker.log"

app = Celery("bench.celery_peer", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    # Acknowledged after the task ran, so a worker lost mid-task means redelivery, not loss
    # (the ledger drops the repeat), the guarantee our service gives.
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    # worker_prefetch_multiplier is left at Celery's default (4 messages per process), as a
    # service would run it.
)

# --- the worker side: one task = one event's work --------------------------------------------------

CLAIM = (
    "INSERT INTO processed_events (consumer, event_id, event_type, processed_at)"
    " VALUES (%s, %s, %s, clock_timestamp())"
    " ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
)
# What consumers/users.py emits (SQLAlchemy adds updated_at from the model's onupdate).
TOUCH = (
    "UPDATE users SET last_active_at = GREATEST(COALESCE(last_active_at, %s), %s), updated_at = now()"
    " WHERE id = %s"
)

_connection: list[psycopg.Connection[tuple[Any, ...]]] = []  # this worker process's, once opened


def _database() -> psycopg.Connection[tuple[Any, ...]]:
    if not _connection:
        # autocommit: the task's `transaction()` block is then exactly one BEGIN ... COMMIT.
        _connection.append(psycopg.connect(os.environ[DATABASE_URL_ENV], autocommit=True))
    return _connection[0]


def _open_database(**_: object) -> None:
    # In each forked pool process, never in the parent: a connection must not cross a fork.
    _database()


def _close_database(**_: object) -> None:
    while _connection:
        _connection.pop().close()


worker_process_init.connect(_open_database)
worker_process_shutdown.connect(_close_database)


def _record_activity(event_id: str, user_id: int, at: str) -> None:
    """Claim the event in the ledger and, if it was new, move the user's last_active_at forward."""
    when = datetime.fromisoformat(at)
    database = _database()
    with database.transaction():
        claimed = database.execute(CLAIM, (CONSUMER, event_id, EVENT_TYPE)).fetchone()
        if claimed is not None:
            database.execute(TOUCH, (when, when, user_id))


# The explicit name: the publisher runs this file as __main__, the worker imports it as a module.
record_activity = app.task(name="bench.celery_peer.record_activity", ignore_result=True)(_record_activity)

# --- the measuring side ----------------------------------------------------------------------------

Event = tuple[uuid.UUID, int, datetime]


def _events(count: int, users: int) -> list[Event]:
    base = datetime.now(UTC)
    return [(uuid.uuid4(), i % users + 1, base + timedelta(milliseconds=i)) for i in range(count)]


async def _insert_users(engine: AsyncEngine, users: int) -> None:
    async with engine.begin() as connection:
        for start in range(1, users + 1, 5000):
            ids = range(start, min(start + 5000, users + 1))
            await connection.execute(insert(User), [{"id": u, "telegram_id": u} for u in ids])


def _enqueue(queue: str, events: Sequence[Event]) -> int:
    """Publish one task per event on `queue`; return how many messages the queue then holds."""
    with app.connection_for_write() as connection, app.producer_or_acquire() as producer:
        for event_id, user_id, at in events:
            record_activity.apply_async(
                (str(event_id), user_id, at.isoformat()), queue=queue, producer=producer
            )
        declared = connection.default_channel.queue_declare(queue=queue, passive=True)
    return int(declared.message_count)


def _delete_queue(queue: str) -> None:
    """Drop the run's queue and its routing entries (they would pile up in Redis run after run)."""
    with app.connection_for_write() as connection:
        # Declared first: a channel deletes only the bindings it knows of.
        bound = app.amqp.queues[queue].bind(connection.default_channel)
        bound.declare()
        bound.delete()


async def _start_worker(database_url: str, queue: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env[DATABASE_URL_ENV] = (
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    env["DIANABOT_BENCH_REDIS_URL"] = REDIS_URL
    WORKER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with WORKER_LOG.open("wb") as log:
        # A session of its own: if SIGTERM is not enough, its pool processes go with it.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_peer",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(WORKERS),
            "--loglevel",
            "WARNING",
            "--queues",
            queue,
            "--hostname",
            f"{queue}@%h",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def _stop_worker(worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is not None:
        return
    worker.send_signal(signal.SIGTERM)  # warm shutdown: finish the running tasks, then exit
    try:
        await asyncio.wait_for(worker.wait(), timeout=30)
    except TimeoutError:
        os.killpg(worker.pid, signal.SIGKILL)
        await worker.wait()


async def _claimed(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM processed_events WHERE consumer = :c"), {"c": CONSUMER}
        )
    return int(count or 0)


async def _wait_for_ledger(
    engine: AsyncEngine, worker: asyncio.subprocess.Process, count: int, stall_s: float = 60
) -> None:
    """Until `count` tasks are done; fail when the worker dies or nothing is done for `stall_s`
    (a loaded machine is slow, not stuck, so there is no deadline for the whole drain)."""
    last, moved = -1, time.monotonic()
    while (done := await _claimed(engine)) < count:
        if worker.returncode is not None:
            raise RuntimeError(
                f"celery worker exited ({worker.returncode}) at {done}/{count}; see {WORKER_LOG}"
            )
        if done != last:
            last, moved = done, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            raise RuntimeError(f"celery peer: stuck at {done}/{count} for {stall_s:.0f}s; see {WORKER_LOG}")
        # Coarse on purpose: the figure comes from the rows' timestamps, and a busy poller would
        # take CPU from the worker it measures.
        await asyncio.sleep(1.0)


async def _ledger_span_s(engine: AsyncEngine) -> float:
    async with engine.connect() as connection:
        span = await connection.scalar(
            text(
                "SELECT extract(epoch FROM max(processed_at) - min(processed_at))"
                " FROM processed_events WHERE consumer = :c"
            ),
            {"c": CONSUMER},
        )
    return float(span)


async def _verify(engine: AsyncEngine, events: Sequence[Event]) -> None:
    """Every event's effect exactly once: each id claimed once, each user at its latest event."""
    async with engine.connect() as connection:
        claimed = (
            await connection.execute(
                text("SELECT event_id FROM processed_events WHERE consumer = :c"), {"c": CONSUMER}
            )
        ).scalars()
        ids = list(claimed)
        users = await connection.execute(text("SELECT id, last_active_at FROM users"))
        active = {user_id: at for user_id, at in users}
    expected_ids = {event_id for event_id, _, _ in events}
    if len(ids) != len(expected_ids) or set(ids) != expected_ids:
        raise RuntimeError(
            f"celery peer: ledger has {len(ids)} rows ({len(set(ids))} distinct) for "
            f"{len(expected_ids)} events; {len(expected_ids - set(ids))} missing, "
            f"{len(set(ids) - expected_ids)} unknown"
        )
    latest: dict[int, datetime] = {}
    for _, user_id, at in events:
        latest[user_id] = max(at, latest.get(user_id, at))
    wrong = [u for u, at in latest.items() if active.get(u) != at]
    if wrong:
        raise RuntimeError(f"celery peer: {len(wrong)} users' last_active_at is not their latest event's")


async def run_celery_peer(database_url_base: str, events: int, users: int) -> dict[str, float | int]:
    """Measure the Celery peer on a fresh ``dianabot_bench_celery`` database on the server of
    `database_url_base` (any database name; SQLAlchemy asyncpg URL). Needs Redis at REDIS_URL."""
    url = await recreate(database_url_base, DATABASE)
    await migrate(url, REPO)
    engine = create_async_engine(url)
    queue = f"bench.celery.{uuid.uuid4().hex[:8]}"
    try:
        await _insert_users(engine, users)
        work = _events(events, users)
        queued = await asyncio.to_thread(_enqueue, queue, work)
        if queued != events:
            raise RuntimeError(f"celery peer: {queued} messages queued for {events} tasks")
        worker = await _start_worker(url, queue)
        try:
            await _wait_for_ledger(engine, worker, events)
        finally:
            await _stop_worker(worker)
        seconds = await _ledger_span_s(engine)
        await _verify(engine, work)
    finally:
        await engine.dispose()
        await asyncio.to_thread(_delete_queue, queue)
    return {
        "throughput_tasks_per_s": round(events / seconds, 1),
        "events": events,
        "users": users,
        "workers": WORKERS,
        "prefetch_multiplier": int(app.conf.worker_prefetch_multiplier),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="tasks in the backlog")
    parser.add_argument("--users", type=int, default=2_000, help="users the tasks are spread over")
    args = parser.parse_args()
    base = load_settings().database.url.get_secret_value()
    print(json.dumps(asyncio.run(run_celery_peer(base, args.events, args.users))))


if __name__ == "__main__":
    main()
