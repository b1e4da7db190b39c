"""One trace from a bot's publish, through Kafka and the handler, down to the handler's SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import UserActivity
from core.kafka import create_broker
from core.pipeline.handlers import HandlerContext, HandlerGroup
from core.publisher import EventPublisher
from core.settings import Settings
from core.telemetry import kafka_middlewares, setup_tracing
from tests.integration.pipeline_support import (
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)
from tests.support import wait_until


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
