"""Turning a Kafka record into an envelope and a typed payload, or a reason it is malformed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from contracts.envelope import EventEnvelope, EventPayload
from contracts.events import EVENT_TYPES

# Headers the pipeline adds to records it re-publishes to retry topics.
H_ATTEMPT = "x-attempt"
H_DUE_AT = "x-due-at"
H_ORIGINAL_TOPIC = "x-original-topic"
H_ORIGINAL_PARTITION = "x-original-partition"
H_ORIGINAL_OFFSET = "x-original-offset"
H_LAST_ERROR = "x-last-error"

Record: TypeAlias = ConsumerRecord[bytes | None, bytes | None]


def header(record: Record, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return bytes(value).decode("utf-8", errors="replace")
    return None


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    record: Record
    envelope: EventEnvelope
    payload: EventPayload

    @property
    def attempt(self) -> int:
        """0 for the first delivery from the source topic, n for the n-th retry."""
        return int(header(self.record, H_ATTEMPT) or 0)

    @property
    def due_at(self) -> datetime | None:
        raw = header(self.record, H_DUE_AT)
        return datetime.fromtimestamp(int(raw) / 1000, UTC) if raw else None


@dataclass(frozen=True, slots=True)
class Malformed:
    record: Record
    reason: str


def _summarize(error: ValidationError) -> str:
    parts = []
    for e in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def decode(record: Record, known: Mapping[str, type[EventPayload]] = EVENT_TYPES) -> DecodedEvent | Malformed:
    try:
        body: Any = json.loads(record.value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Malformed(record, "malformed: body is not JSON")
    if not isinstance(body, dict):
        return Malformed(record, "malformed: body is not a JSON object")
    try:
        envelope = EventEnvelope.model_validate(body)
    except ValidationError as error:
        return Malformed(record, f"malformed: envelope schema violation: {_summarize(error)}")
    payload_type = known.get(envelope.event_type)
    if payload_type is None:
        return Malformed(record, f"malformed: unknown event type {envelope.event_type!r}")
    try:
        payload = payload_type.model_validate(envelope.payload)
    except ValidationError as error:
        return Malformed(
            record, f"malformed: {envelope.event_type} payload schema violation: {_summarize(error)}"
        )
    return DecodedEvent(record, envelope, payload)
