"""The contracts as JSON Schema (``python -m dianabot_contracts.schema``) and as AsyncAPI
(``faststream docs gen``)."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import json
import math
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from consumers import app as consumers_app
from consumers import asyncapi as asyncapi_document
from consumers.app import create_app
from consumers.registry import HANDLER_GROUPS
from dianabot_contracts import baselines, schema
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import (
    EVENT_TYPES,
    AlertRaised,
    AlertResolved,
    BesitosEarned,
    BesitosSpent,
    BroadcastRequested,
    Button,
    ChannelJoinRequested,
    DailyGiftClaimed,
    EconomyDriftDetected,
    JobCompleted,
    JobFailed,
    Media,
    MessageContent,
    MissionAssigned,
    MissionCompleted,
    NotificationRequested,
    PostFailed,
    PostPublished,
    PostScheduled,
    Priority,
    SchedulerTick,
    SubscriptionCancelled,
    SubscriptionExpired,
    SubscriptionExpiring,
    SubscriptionRenewed,
    SubscriptionStarted,
    UserActivity,
    UserRegistered,
)
from dianabot_contracts.topics import DEAD_LETTERS, ROUTES, TOPICS, USERS, topic_for
from dianabot_core.pipeline.handlers import retry_group
from dianabot_core.settings import DatabaseSettings, KafkaSettings
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CONTENT = MessageContent(
    text="hola",
    media=(Media(kind="photo", file="https://example.org/a.jpg"),),
    buttons=((Button(text="Ver", url="https://example.org"), Button(text="Ok", callback_data="ok")),),
)

# One valid payload per event type: a new event type needs a sample here.
SAMPLES: dict[str, EventPayload] = {
    e.event_type: e
    for e in (
        UserRegistered(user_id=1, telegram_id=11, username="diana", language_code="es"),
        UserActivity(user_id=1, at=AT, kind="reaction"),
        SubscriptionStarted(user_id=1, subscription_id=2, plan="monthly", start_at=AT, end_at=AT),
        SubscriptionRenewed(user_id=1, subscription_id=2, plan="lifetime", end_at=None),
        SubscriptionExpiring(user_id=1, subscription_id=2, end_at=AT, reminder="7d"),
        SubscriptionExpired(user_id=1, subscription_id=2, end_at=AT),
        SubscriptionCancelled(user_id=1, subscription_id=2),
        ChannelJoinRequested(chat_id=-100, telegram_user_id=11, requested_at=AT),
        PostScheduled(
            post_id="p1", channel_chat_id=-100, post_type="trivia", content=CONTENT, scheduled_for=AT
        ),
        PostPublished(post_id="p1", channel_chat_id=-100, telegram_message_id=5, published_at=AT),
        PostFailed(post_id="p1", channel_chat_id=-100, reason="403"),
        NotificationRequested(
            user_id=1, template="welcome", params={"name": "Diana"}, priority=Priority.CRITICAL
        ),
        BroadcastRequested(broadcast_id="b1", audience="list", user_ids=(1, 2), content=CONTENT),
        MissionAssigned(user_id=1, mission_key="daily_react", period_start=date(2026, 3, 4)),
        MissionCompleted(user_id=1, mission_key="daily_react", period_start=date(2026, 3, 4)),
        DailyGiftClaimed(user_id=1, claimed_at=AT),
        BesitosEarned(user_id=1, amount=10, source="mission", balance_after=10, idempotency_key="k1"),
        BesitosSpent(user_id=1, amount=5, reason="shop", balance_after=5, idempotency_key="k2"),
        EconomyDriftDetected(checked_at=AT, drifts={1: {"balance": 10, "transactions_sum": 9}}),
        SchedulerTick(job="scheduled_daily_missions", slot=AT),
        JobCompleted(job="scheduled_daily_missions", slot=AT, duration_s=0.5, counts={"assigned": 3}),
        JobFailed(job="scheduled_daily_missions", slot=AT, error_type="TimeoutError", error_message="slow"),
        AlertRaised(alert_key="dlq", severity="critical", summary="dead letters", details={"n": 3}),
        AlertResolved(alert_key="dlq", summary="drained"),
    )
}


# --- a small JSON Schema checker (the `jsonschema` package is used instead when installed) ---------

_ANNOTATIONS = frozenset({"title", "description", "default", "$schema", "$id", "$defs", "examples"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_FORMATS: dict[str, Callable[[str], object]] = {
    "uuid": uuid.UUID,
    "date-time": datetime.fromisoformat,
    "date": date.fromisoformat,
}


def _errors(node: dict[str, Any] | bool, value: Any, root: dict[str, Any], at: str) -> Iterator[str]:  # noqa: C901
    """Every way `value` breaks `node`; raises on a keyword this checker does not know."""
    if isinstance(node, bool):  # `true` allows anything, `false` nothing
        if not node:
            yield f"{at}: not allowed"
        return
    for keyword, rule in node.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$ref":
            assert rule.startswith("#/$defs/"), rule
            yield from _errors(root["$defs"][rule.removeprefix("#/$defs/")], value, root, at)
        elif keyword == "type":
            if not _TYPES[rule](value):
                yield f"{at}: not {rule}"
        elif keyword == "const":
            if value != rule:
                yield f"{at}: {value!r} != {rule!r}"
        elif keyword == "enum":
            if value not in rule:
                yield f"{at}: {value!r} not in {rule}"
        elif keyword in ("anyOf", "oneOf"):
            passing = sum(not any(_errors(option, value, root, at)) for option in rule)
            if passing == 0 or (keyword == "oneOf" and passing > 1):
                yield f"{at}: {passing} of {keyword} match"
        elif keyword == "allOf":
            for option in rule:
                yield from _errors(option, value, root, at)
        elif not isinstance(value, dict | list | str | int | float):
            continue  # the remaining keywords only constrain objects, arrays, strings and numbers
        elif keyword == "properties":
            for name, sub in rule.items():
                if isinstance(value, dict) and name in value:
                    yield from _errors(sub, value[name], root, f"{at}.{name}")
        elif keyword == "required":
            if isinstance(value, dict):
                yield from (f"{at}.{name}: required" for name in rule if name not in value)
        elif keyword == "additionalProperties":
            if isinstance(value, dict):
                known = node.get("properties", {})
                for name, item in value.items():
                    if name not in known:
                        yield from _errors(rule, item, root, f"{at}.{name}")
        elif keyword == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _errors(rule, item, root, f"{at}[{i}]")
        elif keyword in ("minLength", "maxLength"):
            if isinstance(value, str) and not (
                len(value) >= rule if keyword == "minLength" else len(value) <= rule
            ):
                yield f"{at}: {keyword} {rule}"
        elif keyword in ("minItems", "maxItems"):
            if isinstance(value, list) and not (
                len(value) >= rule if keyword == "minItems" else len(value) <= rule
            ):
                yield f"{at}: {keyword} {rule}"
        elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if (
                isinstance(value, int | float)
                and not {
                    "minimum": value >= rule,
                    "maximum": value <= rule,
                    "exclusiveMinimum": value > rule,
                    "exclusiveMaximum": value < rule,
                }[keyword]
            ):
                yield f"{at}: {keyword} {rule}"
        elif keyword == "format":
            if isinstance(value, str):
                try:
                    _FORMATS[rule](value)
                except ValueError:
                    yield f"{at}: not a {rule}"
        else:
            raise AssertionError(f"the checker does not know the keyword {keyword!r} (at {at})")


def validation_errors(document: dict[str, Any], value: Any) -> list[str]:
    try:
        jsonschema: Any = importlib.import_module("jsonschema")
    except ImportError:
        return list(_errors(document, value, document, "$"))
    validator = jsonschema.Draft202012Validator(document, format_checker=jsonschema.FormatChecker())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]


def _sample_body(event_type: str) -> dict[str, Any]:
    envelope = EventEnvelope.wrap(SAMPLES[event_type], producer="bot")
    body: dict[str, Any] = json.loads(envelope.to_body())
    return body


# --- JSON Schema ---------------------------------------------------------------------------------


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_type_has_a_schema_naming_it_as_a_const(event_type: str) -> None:
    files = schema.build_files()
    document = files[f"{event_type}.schema.json"]
    payload_type = EVENT_TYPES[event_type]

    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["properties"]["event_type"]["const"] == event_type
    assert "event_type" in document["required"]
    payload_ref = document["properties"]["payload"]["$ref"]
    payload_schema = document["$defs"][payload_ref.removeprefix("#/$defs/")]
    assert set(payload_schema["properties"]) == set(payload_type.model_fields)
    # The envelope's own fields are all there, with the payload as the only one replaced.
    assert set(document["properties"]) == set(EventEnvelope.model_fields)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_a_sample_envelope_validates_and_broken_ones_do_not(event_type: str) -> None:
    document = schema.event_schema(EVENT_TYPES[event_type])
    body = _sample_body(event_type)

    assert validation_errors(document, body) == []
    assert validation_errors(schema.envelope_schema(), body) == []
    other_type = next(t for t in EVENT_TYPES if t != event_type)
    assert validation_errors(document, {**body, "event_type": other_type})
    assert validation_errors(document, {k: v for k, v in body.items() if k != "event_id"})
    first_required = document["$defs"][EVENT_TYPES[event_type].__name__]["required"][0]
    del body["payload"][first_required]
    assert validation_errors(document, body)


def test_the_schemas_know_nested_types() -> None:
    document = schema.event_schema(PostScheduled)
    body = _sample_body(PostScheduled.event_type)
    body["payload"]["content"]["buttons"][0][0]["text"] = ""  # min_length=1
    body["payload"]["content"]["media"][0]["kind"] = "sticker"  # not one of the kinds
    body["payload"]["scheduled_for"] = "tomorrow"
    errors = validation_errors(document, body)
    assert len(errors) == 3, errors
    for field in ("text", "kind", "scheduled_for"):
        assert any(field in error for error in errors), (field, errors)


def test_the_index_names_each_event_types_topic_and_schema_file() -> None:
    index = schema.index()
    assert set(index) == set(EVENT_TYPES)
    for event_type, entry in index.items():
        topic = ROUTES[event_type]
        assert entry["topic"] == topic.name
        assert entry["partitions"] == topic.partitions
        assert entry["critical"] is topic.critical
        assert entry["key"] == topic.key
        assert entry["schema"] == f"{event_type}.schema.json"
    assert [lane["topic"] for lane in index["notification.requested"]["lanes"]] == [
        "dianabot.notifications.critical"
    ]
    # The index covers every topic `topic_for` can choose (the sample notification is critical).
    for event_type, payload in SAMPLES.items():
        entry = index[event_type]
        assert topic_for(payload).name in {entry["topic"]} | {
            lane["topic"] for lane in entry.get("lanes", [])
        }


def test_the_command_writes_the_files_or_prints_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema.main(["--out", str(tmp_path / "schemas")]) == 0
    written = {p.name: json.loads(p.read_text()) for p in (tmp_path / "schemas").iterdir()}
    assert set(written) == {f"{t}.schema.json" for t in EVENT_TYPES} | {"envelope.schema.json", "index.json"}
    assert written["index.json"]["user.registered"]["schema"] == "user.registered.schema.json"
    capsys.readouterr()

    assert schema.main([]) == 0
    combined = json.loads(capsys.readouterr().out)
    assert set(combined) == {"envelope", "events", "index"}
    assert combined["events"]["user.registered"] == written["user.registered.schema.json"]


def test_contracts_import_only_pydantic_and_the_standard_library() -> None:
    code = (
        "import dianabot_contracts.events, dianabot_contracts.topics, dianabot_contracts.schema, "
        "dianabot_contracts.baselines; import sys; "
        "assert not any(m.startswith(('dianabot_core', 'dianabot_cli', 'dianabot_double', 'consumers', "
        "'schedulers', 'faststream', 'sqlalchemy', 'aiokafka')) for m in sys.modules), sorted(sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_committed_schemas_are_what_the_code_generates() -> None:
    if outdated := baselines.stale(SCHEMAS):
        pytest.fail("docs/schemas is stale, run `make schemas`:\n" + "\n".join(outdated))


def test_the_code_still_reads_every_published_payload_version() -> None:
    """A change that breaks producers of a published version fails here until its schema_version is
    raised and an upcaster from the old version is registered (docs/README.md, evolving a contract)."""
    published = baselines.read(SCHEMAS)
    assert set(published) >= set(EVENT_TYPES)  # each event type has at least its current version's
    if found := baselines.problems(published):
        pytest.fail("\n".join(found))


# --- AsyncAPI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    document: dict[str, Any]
    subscriptions: list[tuple[str, str]]  # (topic, consumer group) of every subscriber of the app


@pytest.fixture(scope="module")
def built() -> Built:
    """What `faststream docs gen consumers.app:app` generates, built in-process, and the app's groups.

    The addresses point nowhere: building the app must not connect to Kafka or PostgreSQL.
    """
    settings = make_settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", connect_timeout_s=1),
        database=DatabaseSettings(url=SecretStr("postgresql+asyncpg://nobody:x@127.0.0.1:9/none")),
    )
    app = create_app(settings)
    assert app.broker is not None
    subscribers: list[Any] = list(app.broker.subscribers)
    return Built(
        document=app.schema.to_specification().to_jsonable(),
        subscriptions=sorted((t.name, sub.group_id) for sub in subscribers for t in sub.topics),
    )


@pytest.fixture(scope="module")
def asyncapi(built: Built) -> dict[str, Any]:
    return built.document


def _deref(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _channel_payload(document: dict[str, Any], channel: dict[str, Any]) -> dict[str, Any]:
    [message] = channel["messages"].values()
    return _deref(document, _deref(document, message)["payload"])


def test_asyncapi_lists_every_registry_topic_with_its_events(asyncapi: dict[str, Any]) -> None:
    channels = asyncapi["channels"]
    addresses = {channel["address"] for channel in channels.values()}
    assert {topic.name for topic in TOPICS} <= addresses
    schemas = asyncapi["components"]["schemas"]
    for event_type, payload_type in EVENT_TYPES.items():
        envelope = schemas[f"{payload_type.__name__}Envelope"]
        assert envelope["properties"]["event_type"]["const"] == event_type
    # A topic's channel names the envelopes of exactly the events that travel on it.
    users = _channel_payload(asyncapi, channels[f"{USERS.name}:Publisher"])
    assert sorted(ref["$ref"] for ref in users["oneOf"]) == [
        "#/components/schemas/UserActivityEnvelope",
        "#/components/schemas/UserRegisteredEnvelope",
    ]
    assert users["discriminator"] == "event_type"
    dead_letters = _channel_payload(asyncapi, channels[f"{DEAD_LETTERS.name}:Publisher"])
    assert {"$ref": "#/components/schemas/EventEnvelope"} in dead_letters["anyOf"]


def test_asyncapi_lists_every_consumer_group_with_the_events_it_handles(built: Built) -> None:
    document = built.document
    specs = {spec.name: spec for group in HANDLER_GROUPS for spec in group.specs}
    sources = {(topic.name, spec.group_for(topic)) for spec in specs.values() for topic in spec.topics}
    retries = {
        spec.retry_topic(spec.group_for(topic), attempt)
        for spec in specs.values()
        for topic in spec.topics
        for attempt in range(1, len(spec.retry_delays_s) + 1)
    }
    assert sources
    assert sources <= set(built.subscriptions)
    assert retries <= {topic for topic, _ in built.subscriptions}

    retry_handlers: dict[str, set[str]] = {}  # shared retry group -> the handlers whose retries it reads
    for spec in specs.values():
        for lane in spec.topics:
            retry_handlers.setdefault(retry_group(lane.name), set()).add(spec.name)
    for topic, group_id in built.subscriptions:  # source and retry consumers alike
        channel_name = f"{group_id}:{topic}" if group_id in retry_handlers else f"{topic}:{group_id}"
        channel = document["channels"][channel_name]
        assert channel["address"] == topic
        assert channel["description"].startswith(f"Consumer group {group_id}: ")
        described = channel["description"].removeprefix(f"Consumer group {group_id}: ")
        if group_id in retry_handlers:
            handlers = retry_handlers[group_id]
            assert described.startswith(f"retries of {', '.join(sorted(handlers))}.")
        else:
            handlers = {described.split(" ")[0]}
        payload = _channel_payload(document, channel)
        assert sorted(ref["$ref"] for ref in payload["oneOf"]) == sorted(
            {f"#/components/schemas/{e.__name__}Envelope" for h in handlers for e in specs[h].events}
        )
        operations = document["operations"]  # FastStream suffixes a multi-topic one's name
        operation = operations.get(channel_name) or operations[f"{channel_name}Subscribe"]
        assert operation["action"] == "receive"


def test_asyncapi_shows_the_user_registered_payload(asyncapi: dict[str, Any]) -> None:
    channel = asyncapi["channels"][f"{USERS.name}:dianabot.users.register"]
    [envelope_ref] = _channel_payload(asyncapi, channel)["oneOf"]
    envelope = _deref(asyncapi, envelope_ref)
    assert envelope["properties"]["event_type"]["const"] == "user.registered"
    payload = _deref(asyncapi, envelope["properties"]["payload"])
    assert set(payload["properties"]) == {"user_id", "telegram_id", "username", "language_code"}
    assert set(payload["required"]) == {"user_id", "telegram_id"}


def test_asyncapi_names_the_service_its_version_and_what_travels(asyncapi: dict[str, Any]) -> None:
    info = asyncapi["info"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert info["title"] == "DianaBot jobs"
    assert info["version"] == project["version"] == importlib.metadata.version(project["name"])
    assert "event envelope" in info["description"]
    assert DEAD_LETTERS.name in info["description"]


def test_the_committed_asyncapi_document_is_what_the_code_generates() -> None:
    committed = (ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    generated = asyncapi_document.render(asyncapi_document.generate())
    if committed != generated:
        diff = difflib.unified_diff(
            committed.splitlines(), generated.splitlines(), "docs/asyncapi.yaml", "generated", lineterm=""
        )
        pytest.fail("docs/asyncapi.yaml is stale, run `make asyncapi`:\n" + "\n".join(list(diff)[:40]))


def test_asyncapi_check_fails_on_a_stale_document_and_passes_on_a_fresh_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "asyncapi.yaml"
    assert asyncapi_document.main(["--out", str(out)]) == 0
    assert asyncapi_document.main(["--check", "--out", str(out)]) == 0
    fresh = out.read_text()
    out.write_text(fresh.replace("title: DianaBot jobs", "title: FastStream", 1))
    assert out.read_text() != fresh
    assert asyncapi_document.main(["--check", "--out", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert asyncapi_document.main(["--check", "--out", str(tmp_path / "missing.yaml")]) == 1


def test_an_uninstalled_source_tree_takes_its_version_from_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(consumers_app, "version", not_installed)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert consumers_app.service_version() == project["version"]
