"""add_to_outbox without a database: the row it adds to the caller's session, and the trace it keeps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import NotificationRequested, Priority, UserActivity
from dianabot_contracts.topics import NOTIFICATIONS_CRITICAL, USERS
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import add_to_outbox


class _Session:
    """Records what add_to_outbox adds; it must never flush or commit."""

    def __init__(self) -> None:
        self.added: list[object] = []

    def add(self, instance: object) -> None:
        self.added.append(instance)


async def test_the_row_carries_the_envelope_and_routes_by_the_registry() -> None:
    session = _Session()
    cause = EventEnvelope.wrap(UserActivity(user_id=3, at=datetime.now(UTC)), producer="bot")

    envelope = await add_to_outbox(
        cast(AsyncSession, session),
        NotificationRequested(user_id=3, template="t", priority=Priority.CRITICAL),
        producer="jobs",
        caused_by=cause,
    )

    [row] = session.added
    assert isinstance(row, OutboxEvent)
    assert row.event_id == envelope.event_id
    assert row.event_type == "notification.requested"
    assert row.topic == NOTIFICATIONS_CRITICAL.name
    assert row.key == "user:3"
    assert EventEnvelope.model_validate(row.body) == envelope
    assert envelope.causation_id == cause.event_id
    assert row.headers == {}  # no span is active: nothing to continue
    assert row.published_at is None


async def test_the_current_trace_context_is_stored_and_topic_can_be_overridden() -> None:
    session = _Session()
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("bot handler") as span:
        await add_to_outbox(
            cast(AsyncSession, session),
            UserActivity(user_id=5, at=datetime.now(UTC)),
            producer="bot",
            topic="custom.topic",
        )

    [row] = session.added
    assert isinstance(row, OutboxEvent)
    assert row.topic == "custom.topic" != USERS.name
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    assert row.headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
