"""The envelope every event travels in, and its mapping onto a Kafka record.

On the wire the body is the envelope as JSON; ``event_id`` and ``event_type`` are repeated as
headers so tools can route or inspect a record without parsing it; the record key is the
aggregate id (user, post, job) so one entity's events keep their order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from dianabot_contracts.ids import uuid7

HEADER_EVENT_ID = "event_id"
HEADER_EVENT_TYPE = "event_type"


class EventPayload(BaseModel):
    """Base of every payload: frozen, and tolerant of fields added by newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def aggregate_key(self) -> str:
        """The Kafka key: events with the same key are delivered in order."""
        raise NotImplementedError


class EventEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID = Field(description="Chosen by the producer; duplicates carry the same id.")
    event_type: str = Field(description="e.g. subscription.expiring")
    schema_version: int = Field(
        1, ge=1, description="The payload's version (its model's schema_version); older ones are upcast."
    )
    occurred_at: AwareDatetime
    producer: str = Field(description="The service that emitted the event.")
    correlation_id: UUID | None = Field(None, description="The id of the first event of this chain.")
    causation_id: UUID | None = Field(None, description="The id of the event that caused this one.")
    key: str = Field(description="Aggregate id, also the Kafka record key.")
    payload: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        payload: EventPayload,
        *,
        producer: str,
        event_id: UUID | None = None,
        occurred_at: datetime | None = None,
        caused_by: EventEnvelope | None = None,
    ) -> Self:
        event_id = event_id or uuid7()
        return cls(
            event_id=event_id,
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or datetime.now(UTC),
            producer=producer,
            correlation_id=(caused_by.correlation_id or caused_by.event_id) if caused_by else event_id,
            causation_id=caused_by.event_id if caused_by else None,
            key=payload.aggregate_key(),
            payload=payload.model_dump(mode="json"),
        )

    def to_body(self) -> bytes:
        return self.model_dump_json().encode()

    def to_headers(self) -> dict[str, str]:
        return {HEADER_EVENT_ID: str(self.event_id), HEADER_EVENT_TYPE: self.event_type}
