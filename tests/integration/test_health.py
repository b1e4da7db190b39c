"""The health server: liveness, readiness with real and failing checks, Prometheus metrics."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.health import Check, HealthServer, HealthServerError, broker_check, database_check
from dianabot_core.lag import lag_metrics_updater
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import (
    RawProducer,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def serving(checks: Mapping[str, Check], **options: Any) -> AsyncIterator[HealthServer]:
    server = HealthServer(_free_port(), checks, host="127.0.0.1", **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(server: HealthServer, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}{path}") as response:
        return response.status, await response.text()


async def get_json(server: HealthServer, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}{path}") as response:
        return response.status, await response.json()


async def _passes() -> None:
    return None


async def _kafka_down() -> None:
    raise ConnectionError("Kafka is unreachable at 127.0.0.1:1")


async def _hangs() -> None:
    await asyncio.sleep(30)


async def test_livez_answers_and_readyz_names_the_failing_check() -> None:
    checks = {"database": _passes, "kafka": _kafka_down, "slow": _hangs}
    async with serving(checks, check_timeout_s=0.3) as server:
        assert await get_json(server, "/livez") == (200, {"status": "alive"})
        started = time.monotonic()
        status, body = await get_json(server, "/readyz")
        elapsed = time.monotonic() - started

    assert status == 503
    assert body == {
        "status": "unready",
        "failed": {
            "kafka": "ConnectionError: Kafka is unreachable at 127.0.0.1:1",
            "slow": "TimeoutError: no answer within 0.3s",
        },
        "passed": ["database"],
    }
    assert elapsed < 2  # checks run at once, each cut off at its limit


async def test_readyz_is_200_once_the_real_checks_pass_and_503_after_the_broker_stops(
    kafka: Settings, engine: AsyncEngine
) -> None:
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="noop", topics=(unique_topic(),))
    async def noop(event: UserActivity, ctx: HandlerContext) -> None:
        return None

    async with running_consumers(kafka, [group]) as consumers:
        checks = {"database": database_check(engine), "kafka": broker_check(consumers.broker)}
        async with serving(checks) as server:
            assert await get_json(server, "/readyz") == (
                200,
                {"status": "ready", "failed": {}, "passed": ["database", "kafka"]},
            )
            await consumers.broker.stop()
            status, body = await get_json(server, "/readyz")

    assert status == 503
    assert body["failed"] == {"kafka": "RuntimeError: the Kafka broker is not started"}


async def test_metrics_show_events_handled_by_the_pipeline_and_consumer_lag(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await ensure_effects_table(session_factory)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="count", topics=(unique_topic(),))
    async def count(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, 0)

    name = group.specs[0].name
    event = EventEnvelope.wrap(UserActivity(user_id=3, at=datetime.now(UTC), kind="message"), producer="test")
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(group.specs[0].topics[0].name, event)
        deadline = time.monotonic() + 30
        while not await effects_of(session_factory, name):
            assert time.monotonic() < deadline, "the event was not handled"
            await asyncio.sleep(0.1)
        async with serving({}, before_scrape=lag_metrics_updater(kafka.kafka)) as server:
            status, text = await get(server, "/metrics")

    assert status == 200
    assert f'dianabot_events_total{{handler="{name}",outcome="handled"}} 1.0' in text
    assert f'dianabot_consumer_lag_records{{group="{name}",' in text


async def test_port_zero_turns_the_server_off_and_a_busy_port_is_one_clear_error() -> None:
    off = HealthServer(0, {})
    await off.start()
    assert (off.enabled, off.url) == (False, None)
    await off.stop()

    async with serving({}) as server:
        clash = HealthServer(server.port, {}, host="127.0.0.1")
        with pytest.raises(
            HealthServerError, match=rf"^health server cannot listen on 127.0.0.1:{server.port}: "
        ):
            await clash.start()
