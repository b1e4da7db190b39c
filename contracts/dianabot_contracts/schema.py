"""JSON Schemas of the event contracts, for services that do not use these pydantic models.

    python -m dianabot_contracts.schema --out DIR  # a file per event type, envelope.schema.json, index.json
    python -m dianabot_contracts.schema            # one combined document on stdout

``make schemas`` (``dianabot_contracts.baselines``) commits these files to docs/schemas with each payload's
baseline per ``schema_version``.

Each event's schema is the envelope with ``event_type`` fixed to that event's name (a ``const``)
and ``payload`` replaced by the payload model's schema. Schemas describe what consumers accept
(pydantic's validation mode); extra fields are allowed, as consumers ignore them.
``index.json`` maps each event type to its topic, the topic's partitions, whether it is critical,
the record key and the schema file. Pure pydantic: bot services import this package alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, GetJsonSchemaHandler, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaValue

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import ALL_EVENTS, NotificationRequested, Priority
from dianabot_contracts.topics import NOTIFICATIONS_CRITICAL, ROUTES, TOPICS, TopicSpec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_FILE = "envelope.schema.json"
INDEX_FILE = "index.json"

# Lanes besides ROUTES: where `dianabot_contracts.topics.topic_for` sends an event in some cases.
EXTRA_LANES: dict[str, tuple[tuple[TopicSpec, str], ...]] = {
    NotificationRequested.event_type: (
        (NOTIFICATIONS_CRITICAL, f"payload.priority == '{Priority.CRITICAL.value}'"),
    ),
}


def schema_file(event_type: str) -> str:
    return f"{event_type}.schema.json"


@cache
def envelope_model(payload_type: type[EventPayload]) -> type[EventEnvelope]:
    """The envelope of one event type: `event_type` fixed, `payload` typed (``UserRegisteredEnvelope``)."""
    event_type = payload_type.event_type
    fixed_type: Any = Literal[event_type]  # a one-value Literal is a JSON Schema `const`
    return create_model(
        f"{payload_type.__name__}Envelope",
        __base__=EventEnvelope,
        __doc__=f"The envelope of a `{event_type}` event.\n\n{(payload_type.__doc__ or '').strip()}".strip(),
        event_type=(fixed_type, Field(description="Names the event; selects the payload's schema.")),
        payload=(payload_type, ...),
    )


def event_schema(payload_type: type[EventPayload]) -> dict[str, Any]:
    """A standalone JSON Schema (draft 2020-12) of one event type's envelope."""
    schema = envelope_model(payload_type).model_json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_file(payload_type.event_type), **schema}


def envelope_schema() -> dict[str, Any]:
    """The envelope of any event: what a consumer checks before it knows the event type."""
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": ENVELOPE_FILE, **EventEnvelope.model_json_schema()}


def _topic_entry(topic: TopicSpec) -> dict[str, Any]:
    return {"topic": topic.name, "partitions": topic.partitions, "critical": topic.critical, "key": topic.key}


def index() -> dict[str, Any]:
    """Event type -> its topic (partitions, critical, record key), schema file and version."""
    entries: dict[str, Any] = {}
    for payload_type in ALL_EVENTS:
        event_type = payload_type.event_type
        entry = {
            **_topic_entry(ROUTES[event_type]),
            "schema": schema_file(event_type),
            "schema_version": payload_type.schema_version,
            "payload_model": f"{payload_type.__module__}.{payload_type.__qualname__}",
        }
        if lanes := EXTRA_LANES.get(event_type):
            entry["lanes"] = [{**_topic_entry(topic), "when": when} for topic, when in lanes]
        entries[event_type] = entry
    return entries


def topic_events() -> dict[str, tuple[type[EventPayload], ...]]:
    """Every registry topic -> the event types that travel on it (the dead-letter topic has none)."""
    found: dict[str, list[type[EventPayload]]] = {topic.name: [] for topic in TOPICS}
    for payload_type in ALL_EVENTS:
        found[ROUTES[payload_type.event_type].name].append(payload_type)
        for topic, _ in EXTRA_LANES.get(payload_type.event_type, ()):
            found[topic.name].append(payload_type)
    return {name: tuple(events) for name, events in found.items()}


def record_type(events: Iterable[type[EventPayload]]) -> Any:
    """The type of one Kafka record's value carrying any of `events`, for documentation.

    One event type: its envelope model. Several: a union of their envelopes discriminated by
    ``event_type`` (JSON Schema ``oneOf`` with a ``discriminator``). Definitions are named after
    the models (``UserRegisteredEnvelope``, ``UserRegistered``, ``MessageContent``...), so documents
    that merge several of these schemas share them.
    """
    models = tuple(envelope_model(e) for e in sorted(set(events), key=lambda e: e.event_type))
    if not models:
        raise ValueError("record_type needs at least one event type")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="event_type")]  # noqa: UP007 - a runtime tuple


def topic_record_type(topic: TopicSpec) -> Any:
    """`record_type` of the events on a registry topic; the dead-letter topic carries failed records as is."""
    if events := topic_events()[topic.name]:
        return record_type(events)
    return Annotated[
        EventEnvelope | bytes,
        Field(
            description="The failed record's original bytes, unchanged: usually an event envelope, "
            "possibly malformed. The x-dlq-* headers give the reason."
        ),
    ]


@dataclass(frozen=True, eq=False)
class DocumentedAs:
    """``Annotated`` metadata: validate as the annotated type, document (JSON Schema) as `type_`.

    ``Annotated[list[bytes], DocumentedAs(record_type(events))]`` accepts raw bodies and shows the
    envelopes. Unlike ``WithJsonSchema``, the documented type's definitions are generated and
    shared with the rest of the document (``WithJsonSchema`` takes no ``$ref`` to them).
    """

    type_: Any

    def __get_pydantic_json_schema__(
        self, _core_schema: Any, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Generated as a list's items: pydantic inlines a model returned here on its own, while an
        # item stays a reference to a named definition (``UserRegisteredEnvelope``) the document shares.
        many: Any = list.__class_getitem__(self.type_)
        items: JsonSchemaValue = handler(TypeAdapter(many).core_schema)["items"]
        return items if "oneOf" in items else {"oneOf": [items]}


def build_files() -> dict[str, dict[str, Any]]:
    """File name -> JSON document: what ``--out DIR`` writes."""
    files = {schema_file(e.event_type): event_schema(e) for e in ALL_EVENTS}
    files[ENVELOPE_FILE] = envelope_schema()
    files[INDEX_FILE] = index()
    return files


def combined() -> dict[str, Any]:
    """Everything in one document: the envelope, every event's schema, and the index."""
    return {
        "envelope": envelope_schema(),
        "events": {e.event_type: event_schema(e) for e in ALL_EVENTS},
        "index": index(),
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in build_files().items():
        path = out / name
        path.write_text(dumps(document), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dianabot_contracts.schema", description="Export the event contracts as JSON Schema."
    )
    parser.add_argument(
        "--out", type=Path, help="write one file per event type, envelope.schema.json and index.json here"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        sys.stdout.write(dumps(combined()))
        return 0
    written = write(args.out)
    sys.stderr.write(f"wrote {len(written)} files to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
