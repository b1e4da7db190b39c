"""Kill the consumer process with SIGKILL again and again: every event's effect happens exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.settings import Settings
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL
from tests.integration.crash_consumer import PARTITIONS
from tests.integration.pipeline_support import RawProducer, effects_of, ensure_effects_table

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 10_000
KEYS = 50
KILLS = 5


def _start_consumer(topic: str, module: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(
        CRASH_TOPIC=topic,
        CRASH_MODULE=module,
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_KAFKA__SESSION_TIMEOUT_MS="6000",
        DIANABOT_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN="123456:crash-test",
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_TELEMETRY__LOG_LEVEL="WARNING",
        DIANABOT_TELEMETRY__HTTP_PORT="0",
    )
    faststream = str(Path(sys.executable).with_name("faststream"))
    return subprocess.Popen(
        [faststream, "run", "tests.integration.crash_consumer:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await ensure_effects_table(session_factory)
    run = uuid.uuid4().hex[:8]
    topic, module = f"test.crash.{run}", f"crash{run}"
    handler = f"dianabot.{module}.count"
    await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])

    sequence: dict[int, int] = defaultdict(int)
    envelopes = []
    for i in range(EVENTS):
        user = i % KEYS
        envelopes.append(
            EventEnvelope.wrap(
                UserActivity(user_id=user, at=datetime.now(UTC), kind=str(sequence[user])),
                producer="crash-test",
            )
        )
        sequence[user] += 1
    async with RawProducer(kafka) as producer:
        await producer.send_events(topic, envelopes)

    rng = random.Random(run)
    kills = 0
    progress_at_kill: list[int] = []
    process = _start_consumer(topic, module)
    try:
        while kills < KILLS:
            await _wait_for_progress(session_factory, handler)
            await asyncio.sleep(rng.uniform(0.1, 1.5))  # a random moment while it is working
            done = len(await effects_of(session_factory, handler))
            if done >= EVENTS:
                break
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            progress_at_kill.append(done)
            process = _start_consumer(topic, module)
        deadline = time.monotonic() + 120
        while len(await effects_of(session_factory, handler)) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # anything handled twice after the last count would show now
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    effects = await effects_of(session_factory, handler)
    per_event: dict[uuid.UUID, int] = defaultdict(int)
    for effect in effects:
        per_event[effect.event_id] += 1
    print(f"crash test: kills={kills} at effects={progress_at_kill} events={EVENTS} effects={len(effects)}")
    assert kills >= KILLS, f"the run finished before {KILLS} kills: {progress_at_kill}"
    assert len(per_event) == EVENTS, "some events were lost"
    assert max(per_event.values()) == 1, "some events took effect twice"
    # Per key, effects happened in the order the events were published.
    by_key: dict[str, list[int]] = defaultdict(list)
    for effect in effects:
        by_key[effect.key].append(effect.seq)
    assert all(seqs == sorted(seqs) for seqs in by_key.values())


async def _wait_for_progress(session_factory: async_sessionmaker[AsyncSession], handler: str) -> None:
    start = len(await effects_of(session_factory, handler))
    deadline = time.monotonic() + 60
    while len(await effects_of(session_factory, handler)) == start:
        if time.monotonic() > deadline:
            raise AssertionError("the restarted consumer made no progress within 60 s")
        await asyncio.sleep(0.1)
