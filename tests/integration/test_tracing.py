"""One trace from a bot's publish, through Kafka and the handler, down to the handler's SQL; and one
from a scheduler's tick (a real scheduler process exporting over OTLP) to its job's handler."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.jobs import ScheduledJobs
from dianabot_contracts.events import SchedulerTick, UserActivity
from dianabot_contracts.topics import TopicSpec
from dianabot_core.jobs import SchedulerJobState
from dianabot_core.kafka import create_broker
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.publisher import EventPublisher
from dianabot_core.settings import Settings
from dianabot_core.telemetry import kafka_middlewares, setup_tracing
from schedulers.ticker import TICK_SPAN
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL
from tests.integration.pipeline_support import (
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
PROBE = "scheduled_secondly_test_probe"


async def test_one_trace_from_publish_to_the_handlers_sql(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await ensure_effects_table(session_factory)
    exporter = InMemorySpanExporter()
    provider = setup_tracing(kafka.telemetry, SimpleSpanProcessor(exporter))
    topic = unique_topic()
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="traced", topics=(topic,))
    async def traced(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, 0)

    bot_broker = create_broker(kafka.kafka, middlewares=kafka_middlewares(provider))
    async with running_consumers(kafka, [group]), bot_broker:
        await bot_broker.connect()
        publisher = EventPublisher(bot_broker, "bot")
        envelope = await publisher.publish(UserActivity(user_id=5, at=datetime.now(UTC)), topic=topic.name)

        def handler_spans() -> list[ReadableSpan]:
            return [s for s in exporter.get_finished_spans() if s.name == group.specs[0].name]

        await wait_until(lambda: bool(handler_spans()), within=30)

    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    handler_span = handler_spans()[0]
    attributes = dict(handler_span.attributes or {})
    trace_id = handler_span.context.trace_id
    publish = [s for s in spans if s.kind is SpanKind.PRODUCER and topic.name in s.name]
    sql = [
        s
        for s in spans
        if s.context.trace_id == trace_id
        and "testing.effects" in str((s.attributes or {}).get("db.statement"))
    ]
    assert publish
    assert publish[0].context.trace_id == trace_id
    assert attributes["dianabot.event_id"] == str(envelope.event_id)
    assert attributes["dianabot.event_type"] == "user.activity"
    assert sql, "the handler's INSERT has no span in the publish's trace"
    assert sql[0].parent is not None
    assert sql[0].parent.span_id == handler_span.context.span_id


# --- the scheduler: a tick and its job's handler are one trace ------------------------------------


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    attributes: dict[str, str]


@asynccontextmanager
async def otlp_collector() -> AsyncIterator[tuple[str, list[ExportedSpan]]]:
    """A stand-in for an OpenTelemetry collector: an OTLP/HTTP (protobuf) traces endpoint in memory."""
    received: list[ExportedSpan] = []

    async def export(request: web.Request) -> web.Response:
        batch = ExportTraceServiceRequest()
        batch.ParseFromString(await request.read())
        for resource_spans in batch.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_span_id=int.from_bytes(span.parent_span_id, "big") or None,
                            attributes={a.key: a.value.string_value for a in span.attributes},
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}/v1/traces", received
    finally:
        await runner.cleanup()
        sock.close()


def scheduler_process(topic: str, endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    """``faststream run schedulers.app:app`` as deployed, emitting the probe job's ticks on ``topic``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIANABOT_", "OTEL_"))}
    env.update(
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN="123456:tracing-test",
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_TELEMETRY__OTLP_ENDPOINT=endpoint,
        DIANABOT_TELEMETRY__SERVICE_NAME="dianabot-scheduler",
        DIANABOT_SCHEDULER__ENABLED_JOBS=PROBE,
        DIANABOT_SCHEDULER__TICK_TOPIC=topic,
        DIANABOT_SCHEDULER__LOCK_KEY=str(int.from_bytes(os.urandom(6), "big")),
        DIANABOT_SCHEDULER__HTTP_PORT="0",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export spans every 0.1 s instead of 5 s
    )
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("faststream")), "run", "schedulers.app:app"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_a_scheduler_tick_and_its_job_handler_are_one_trace(
    kafka: Settings,
    admin: AIOKafkaAdminClient,
    session_factory: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(kafka.telemetry, SimpleSpanProcessor(exporter))  # this process: the consumer side
    topic = TopicSpec(name=f"test.ticks.{uuid.uuid4().hex[:10]}", partitions=3, key="job:{job}")
    await admin.create_topics([NewTopic(topic.name, num_partitions=3, replication_factor=1)])
    async with session_factory() as session:  # the probe job starts from now
        await session.execute(delete(SchedulerJobState).where(SchedulerJobState.job == PROBE))
        await session.commit()
    registry = ScheduledJobs(HandlerGroup(f"jobs{uuid.uuid4().hex[:8]}"))

    @registry.scheduled(PROBE, topics=(topic,), retry_delays_s=())
    async def probe(tick: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        return {"probed": 1}

    handler = registry.group.specs[0].name

    def handler_spans() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.name == handler]

    async with otlp_collector() as (endpoint, exported), running_consumers(kafka, [registry.group]):
        process = scheduler_process(topic.name, endpoint, tmp_path / "scheduler.log")
        try:
            tick_spans: dict[str, ExportedSpan] = {}

            def a_tick_reached_its_handler() -> bool:
                tick_spans.update(
                    {s.attributes.get("dianabot.event_id", ""): s for s in exported if s.name == TICK_SPAN}
                )
                handled = {str((s.attributes or {}).get("dianabot.event_id")) for s in handler_spans()}
                return bool(handled & set(tick_spans))

            await wait_until(a_tick_reached_its_handler, within=60)
        finally:
            process.terminate()
            process.wait(timeout=30)
        assert process.returncode == 0, (tmp_path / "scheduler.log").read_text()[-3000:]

    handled = next(s for s in handler_spans() if (s.attributes or {}).get("dianabot.event_id") in tick_spans)
    event_id = str((handled.attributes or {})["dianabot.event_id"])
    tick = tick_spans[event_id]
    assert tick.service == "dianabot-scheduler"
    assert tick.attributes["dianabot.job"] == PROBE
    assert handled.context is not None
    assert handled.context.trace_id == tick.trace_id  # one trace, across the two processes
    # The handler's parent is the scheduler's record (FastStream's create/publish spans), a descendant
    # of the tick's span.
    in_trace = {s.span_id: s for s in exported if s.trace_id == tick.trace_id}
    assert handled.parent is not None
    parent = in_trace[handled.parent.span_id]
    assert parent.service == "dianabot-scheduler"
    assert parent.name in {f"{topic.name} create", f"{topic.name} publish"}
    ancestors = []
    while parent.parent_span_id is not None:
        parent = in_trace[parent.parent_span_id]
        ancestors.append(parent.name)
    assert ancestors[-1] == TICK_SPAN
    # The SQL of the tick's transaction is traced beneath it; the tick relay's polling is not.
    sql = [s for s in in_trace.values() if "db.statement" in s.attributes]
    assert any("scheduler_job_state" in s.attributes["db.statement"] for s in sql)
    untraced_polls = [
        s for s in exported if s.parent_span_id is None and "outbox" in s.attributes.get("db.statement", "")
    ]
    assert untraced_polls == []
