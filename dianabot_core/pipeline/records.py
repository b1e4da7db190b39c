"""The record boundary: a raw Kafka record becomes a typed event, or a reason it is malformed.

``decode`` never raises, whatever bytes a producer wrote: every step (headers, UTF-8, JSON,
envelope, schema version, payload, the pipeline's own retry headers) classifies the record as
``Malformed`` with a reason naming the failure. Header values may be null (legal in Kafka) or
binary; they read as text with replacement characters and never fail.

Pipeline headers (``x-attempt``, ``x-due-at``, ``x-original-*``) are trusted only on the
pipeline's retry topics, which only the pipeline writes; on a source topic any producer may have
forged them, so there a record's attempt is 0 and its origin is its own position.

A payload of an older ``schema_version`` than its model's is brought to the model's shape by the
registered upcasters (``dianabot_contracts.upcasters``) before it is validated; a newer version, or an older
one no chain of upcasters leads from, is malformed (a dead letter, replayable once the code knows it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import EVENT_TYPES
from dianabot_contracts.upcasters import UPCASTERS, UpcastError, Upcasters
from dianabot_core.pipeline.errors import describe

# Headers the pipeline adds to records it re-publishes to retry topics.
H_ATTEMPT = "x-attempt"
H_DUE_AT = "x-due-at"
H_ORIGINAL_TOPIC = "x-original-topic"
H_ORIGINAL_PARTITION = "x-original-partition"
H_ORIGINAL_OFFSET = "x-original-offset"
H_LAST_ERROR = "x-last-error"

Record: TypeAlias = ConsumerRecord[bytes | None, bytes | None]

# Kafka's rule for topic names.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

# The largest due time a retry header may carry, as epoch milliseconds (year 9999).
_MAX_EPOCH_MS = 253_402_300_799_000


def header_text(value: bytes | None) -> str:
    """A header value as text: null reads as empty, bytes that are not UTF-8 get U+FFFD."""
    if value is None:
        return ""
    return bytes(value).decode("utf-8", errors="replace")


def header(record: Record, name: str) -> str | None:
    """The first header called `name` as text, or None when the record has none."""
    for key, value in record.headers or ():
        if key == name:
            return header_text(value)
    return None


def headers_text(record: Record) -> dict[str, str]:
    return {str(key): header_text(value) for key, value in record.headers or ()}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record first entered the pipeline: kept across retries so a dead letter names it."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: Record) -> Origin:
        return cls(record.topic, record.partition, record.offset)


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    record: Record
    envelope: EventEnvelope
    """As the producer sent it (its ``schema_version`` and ``payload`` may be an older version's)."""
    payload: EventPayload
    """In the current model's shape."""
    origin: Origin
    attempt: int = 0
    """0 for the first delivery from the source topic, n for the n-th retry."""
    due_at: datetime | None = None
    """When a retry is due, as the pipeline wrote it; None on the source topic."""


@dataclass(frozen=True, slots=True)
class Malformed:
    record: Record
    reason: str
    origin: Origin


class _Reject(Exception):
    """A step of decoding found the record malformed; the message is the reason."""


def decode(
    record: Record,
    known: Mapping[str, type[EventPayload]] = EVENT_TYPES,
    *,
    stage: int = 0,
    upcasters: Upcasters = UPCASTERS,
) -> DecodedEvent | Malformed:
    """Decode a record read by pipeline stage `stage` (0: the source topic, n: retry topic n)."""
    try:
        origin, due_at = _pipeline_headers(record, stage)
    except Exception as error:
        return Malformed(record, f"malformed: {_reason(error)}", Origin.of(record))
    try:
        envelope, payload = _event(record, known, upcasters)
    except Exception as error:  # the boundary never throws: whatever failed is the reason
        return Malformed(record, f"malformed: {_reason(error)}", origin)
    return DecodedEvent(record, envelope, payload, origin, stage, due_at)


def _reason(error: Exception) -> str:
    if isinstance(error, _Reject):
        return str(error)
    return f"{type(error).__name__}: {describe(error, 200)}"


def _pipeline_headers(record: Record, stage: int) -> tuple[Origin, datetime | None]:
    if stage == 0:
        return Origin.of(record), None
    topic = header(record, H_ORIGINAL_TOPIC) or record.topic
    if not _TOPIC_NAME.fullmatch(topic):
        raise _Reject(f"header {H_ORIGINAL_TOPIC} is not a topic name: {topic[:40]!r}")
    origin = Origin(
        topic,
        _int_header(record, H_ORIGINAL_PARTITION, record.partition),
        _int_header(record, H_ORIGINAL_OFFSET, record.offset),
    )
    raw_due = header(record, H_DUE_AT)
    if raw_due is None:
        return origin, None
    due_ms = _parse_int(H_DUE_AT, raw_due)
    if not 0 <= due_ms <= _MAX_EPOCH_MS:
        raise _Reject(f"header {H_DUE_AT} is out of range: {raw_due[:40]!r}")
    return origin, datetime.fromtimestamp(due_ms / 1000, UTC)


def _int_header(record: Record, name: str, default: int) -> int:
    raw = header(record, name)
    return default if raw is None else _parse_int(name, raw)


def _parse_int(name: str, raw: str) -> int:
    if not (raw.isascii() and raw.lstrip("-").isdigit() and len(raw) <= 20):
        raise _Reject(f"header {name} is not an integer: {raw[:40]!r}")
    return int(raw)


def _event(
    record: Record, known: Mapping[str, type[EventPayload]], upcasters: Upcasters
) -> tuple[EventEnvelope, EventPayload]:
    body = _json_object(record.value)
    try:
        envelope = EventEnvelope.model_validate(body)
    except ValidationError as error:
        raise _Reject(f"envelope schema violation: {_summarize(error)}") from None
    payload_type = known.get(envelope.event_type)
    if payload_type is None:
        raise _Reject(f"unknown event type {envelope.event_type[:100]!r}")
    fields = envelope.payload
    if envelope.schema_version != payload_type.schema_version:
        try:
            fields = upcasters.upcast(
                envelope.event_type, fields, envelope.schema_version, payload_type.schema_version
            )
        except UpcastError as error:
            raise _Reject(str(error)) from None
    try:
        payload = payload_type.model_validate(fields)
    except ValidationError as error:
        raise _Reject(f"{envelope.event_type} payload schema violation: {_summarize(error)}") from None
    return envelope, payload


def _json_object(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise _Reject("body is empty")
    try:
        body: Any = json.loads(value)
    except RecursionError:
        raise _Reject("body is nested too deeply to decode") from None
    except UnicodeDecodeError:
        raise _Reject("body is not UTF-8 text") from None
    except json.JSONDecodeError:
        raise _Reject("body is not JSON") from None
    except ValueError as error:
        if "digits" in str(error):  # Python's int-string conversion limit
            raise _Reject("body holds an integer too long to decode (over 4,300 digits)") from None
        raise _Reject(f"body cannot be decoded: {describe(error, 120)}") from None
    if not isinstance(body, dict):
        raise _Reject("body is not a JSON object")
    return body


def _summarize(error: ValidationError) -> str:
    parts = []
    for e in error.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in e["loc"])[:100] or "body"
        parts.append(f"{where}: {e['msg']}")
    return describe(ValueError("; ".join(parts)), 400)
