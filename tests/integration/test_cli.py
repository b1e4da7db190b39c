"""The operator CLI on the real broker and database: listing, showing and replaying dead letters.

Each test records its replays in a consumer group of its own (``--progress-group``), so the
``dianabot.cli.dlq-replay`` group of a developer's stack is never touched, and replays to topics of
its own, outside the registry (``--allow-topic``).
``pytest -s -k listed_then_replayed`` prints the CLI's output for a replayed dead letter.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.cli import build_parser
from dianabot_core.pipeline.errors import PermanentError
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.conftest import TEST_BOOTSTRAP
from tests.integration.pipeline_support import (
    RawProducer,
    dead_letters_for,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
async def _effects(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> None:
    await ensure_effects_table(session_factory)


@pytest.fixture
def progress_group() -> str:
    return f"test.cli.dlq-replay.{uuid.uuid4().hex[:10]}"


def _activity(user_id: int) -> EventEnvelope:
    return EventEnvelope.wrap(
        UserActivity(user_id=user_id, at=datetime.now(UTC), kind="bonus"), producer="test"
    )


def _picky_group(topic_count: int = 1) -> tuple[HandlerGroup, dict[str, bool], Any]:
    """Handlers that fail permanently while ``broken["on"]``, then record one effect per event."""
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    broken = {"on": True}
    for action in ("grant", "notify")[:topic_count]:

        @group.handler(UserActivity, action=action, topics=(topic,), retry_delays_s=(0.2,))
        async def picky(event: UserActivity, ctx: HandlerContext, action: str = action) -> None:
            if broken["on"]:
                raise PermanentError("the bonus table is missing")
            await record_effect(ctx, f"{group.module}.{action}", ctx.envelope.key, 0)

    return group, broken, topic


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """`python -m dianabot_core.cli ...` as an operator runs it: Kafka settings only, no bot token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env["DIANABOT_KAFKA__BOOTSTRAP_SERVERS"] = TEST_BOOTSTRAP
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dianabot_core.cli",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_in_process(kafka: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The same commands without a process start (their event loop is the test's)."""
    capsys.readouterr()
    args = build_parser().parse_args(list(argv))
    code: int = await args.run(args, kafka.kafka)
    return code, capsys.readouterr().out


async def _wait_for(condition: Any, what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {within}s")
        await asyncio.sleep(0.1)


async def _effects_count(session_factory: async_sessionmaker[AsyncSession], handler: str) -> int:
    return len(await effects_of(session_factory, handler))


def _duplicates(handler: str) -> float:
    """Events the handler's ledger dropped (the pipeline runs in this process, so its metrics are here)."""
    labels = {"handler": handler, "outcome": "duplicates"}
    value = REGISTRY.get_sample_value("dianabot_events_total", labels)
    return value or 0.0


async def _records_of(kafka: Settings, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.kafka.bootstrap_servers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


async def _dead_letter_rows(kafka: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out = await run_in_process(kafka, capsys, "dlq", "list", "--json", *argv)
    assert code == 0
    return json.loads(out)


async def test_a_dead_letter_is_listed_then_replayed_and_takes_effect_once(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
    progress_group: str,
) -> None:
    group, broken, topic = _picky_group()
    name = group.specs[0].name
    effect_name = f"{group.module}.grant"
    event = _activity(42)
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic.name, event)
        await dead_letters_for(kafka, name, expected=1)

        code, listing, _ = await run_cli("dlq", "list", "--handler", name, "--progress-group", progress_group)
        assert code == 0, listing
        assert "permanent: PermanentError" in listing
        assert str(event.event_id) in listing
        assert topic.name in listing
        (row,) = await _dead_letter_rows(kafka, capsys, "--handler", name, "--progress-group", progress_group)
        assert row["replayed"] is False
        position = row["dead_letter"]

        code, shown = await run_in_process(kafka, capsys, "dlq", "show", position, "--json")
        details = json.loads(shown)
        assert details["headers"]["x-dlq-error-message"] == "the bonus table is missing"
        assert details["body"]["event_id"] == str(event.event_id)

        broken["on"] = False  # the fix is deployed
        replay = ("dlq", "replay", position, "--progress-group", progress_group, "--allow-topic", topic.name)
        code, replayed, err = await run_cli(*replay)
        with capsys.disabled():  # `pytest -s` shows what an operator sees
            print(f"\n$ python -m dianabot_core.cli dlq list --handler {name}\n{listing}")
            print(f"$ python -m dianabot_core.cli dlq replay {position}\n{replayed}")
        assert code == 0, err
        assert "replayed" in replayed
        await _wait_for(
            lambda: _has_effects(session_factory, effect_name, 1), "the replayed event took no effect"
        )

        before = _duplicates(name)
        code, _, err = await run_cli(*replay)
        assert code == 0, err
        await _wait_for(
            lambda: _seen_duplicate(name, before), "the second replay was not dropped as a duplicate"
        )

    assert [e.event_id for e in await effects_of(session_factory, effect_name)] == [event.event_id]
    (row,) = await _dead_letter_rows(kafka, capsys, "--handler", name, "--progress-group", progress_group)
    assert row["replayed"] is True
    # On the source topic: the original, then two replays naming the dead letter, without pipeline headers.
    records = await _records_of(kafka, topic.name, expected=3)
    replays = [dict(r.headers) for r in records if "x-replayed-from" in dict(r.headers)]
    assert [h["x-replayed-from"] for h in replays] == [position.encode()] * 2
    assert all(not k.startswith("x-dlq-") and not k.startswith("x-original-") for h in replays for k in h)
    assert all(r.key == event.key.encode() and r.value == event.to_body() for r in records)


async def _has_effects(session_factory: async_sessionmaker[AsyncSession], handler: str, count: int) -> bool:
    return await _effects_count(session_factory, handler) >= count


async def _seen_duplicate(handler: str, before: float) -> bool:
    return _duplicates(handler) > before


async def test_replay_all_replays_each_dead_letter_once_and_remembers_it(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
    progress_group: str,
) -> None:
    group, broken, topic = _picky_group()
    name = group.specs[0].name
    effect_name = f"{group.module}.grant"
    events = [_activity(1), _activity(2)]
    replay = ["dlq", "replay", "--all", "--handler", name, "--progress-group", progress_group]
    replay += ["--allow-topic", topic.name]
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_events(topic.name, events)
        await dead_letters_for(kafka, name, expected=2)
        broken["on"] = False

        code, dry = await run_in_process(kafka, capsys, *replay, "--dry-run", "--json")
        assert code == 0
        assert [r["status"] for r in json.loads(dry)] == ["would replay"] * 2

        code, out = await run_in_process(kafka, capsys, *replay, "--json")
        assert code == 0, out
        assert [r["status"] for r in json.loads(out)] == ["replayed"] * 2
        await _wait_for(lambda: _has_effects(session_factory, effect_name, 2), "the replays took no effect")

        code, out = await run_in_process(kafka, capsys, *replay)
        assert (code, out.strip()) == (
            0,
            "nothing to replay (every matching dead letter was replayed before)",
        )

    assert sorted(e.event_id for e in await effects_of(session_factory, effect_name)) == sorted(
        e.event_id for e in events
    )
    rows = await _dead_letter_rows(kafka, capsys, "--handler", name, "--progress-group", progress_group)
    assert [r["replayed"] for r in rows] == [True, True]


async def test_a_malformed_dead_letter_replayed_is_dead_lettered_again(
    kafka: Settings, capsys: pytest.CaptureFixture[str], progress_group: str
) -> None:
    group, _, topic = _picky_group()
    name = group.specs[0].name
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_raw(topic.name, b"not json", key=b"user:9")
        await dead_letters_for(kafka, name, expected=1)
        (row,) = await _dead_letter_rows(kafka, capsys, "--handler", name)
        code, _ = await run_in_process(
            kafka, capsys, "dlq", "replay", row["dead_letter"], "--progress-group", progress_group,
            "--allow-topic", topic.name,
        )  # fmt: skip
        assert code == 0
        letters = await dead_letters_for(kafka, name, expected=2)

    again = next(letter for letter in letters if "x-replayed-from" in letter)
    assert again["x-replayed-from"] == row["dead_letter"]
    assert again["x-dlq-reason"] == "malformed: body is not JSON"
    assert again["__value__"] == "not json"


async def test_a_record_dead_lettered_by_two_handlers_is_replayed_once_for_both(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
    progress_group: str,
) -> None:
    group, broken, topic = _picky_group(topic_count=2)
    event = _activity(5)
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic.name, event)
        for spec in group.specs:
            await dead_letters_for(kafka, spec.name, expected=1)
        broken["on"] = False
        code, out = await run_in_process(
            kafka, capsys, "dlq", "replay", "--all", "--source-topic", topic.name, "--json",
            "--progress-group", progress_group, "--allow-topic", topic.name,
        )  # fmt: skip
        assert code == 0
        statuses = sorted(r["status"].split(" as ")[0] for r in json.loads(out))
        assert statuses == ["replayed", "same record"]
        for action in ("grant", "notify"):
            await _wait_for(
                lambda action=action: _has_effects(session_factory, f"{group.module}.{action}", 1),
                f"{action} took no effect",
            )

    for action in ("grant", "notify"):
        effects = await effects_of(session_factory, f"{group.module}.{action}")
        assert [e.event_id for e in effects] == [event.event_id]


async def test_unknown_positions_and_missing_arguments_fail_with_one_line(
    kafka: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli("dlq", "show", "99:0")
    assert (code, out) == (1, "")
    assert err.strip() == "error: dianabot.dead_letters has no partition 99"
    code, _, err = await run_cli("dlq", "replay")
    assert code == 1
    assert err.strip() == "error: name dead letters as PARTITION:OFFSET, or pass --all"
    code, _, err = await run_cli("dlq", "show", "zero")
    assert code == 2
    assert "expected PARTITION:OFFSET" in err
