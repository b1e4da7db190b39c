"""Hostile records: what a buggy or malicious producer could put on the service's topics.

Each record has the key ``chaos:fuzz:{n}`` (dead letters keep the key, so each one is traced back
to its record whatever its headers claim) and goes to a partition of its topic chosen by the seed,
among the valid events. Two families, with the dead letters each must produce:

* malformed (not JSON, cut JSON, 200,000 levels of nesting, a 5,000-digit integer, wrong types,
  unknown event types, non-objects, empty and null values, invalid UTF-8, NaN, duplicate keys,
  bodies near or over 1 MB): one dead letter from every handler subscribed to the topic;
* failing (a well-formed notification for a user who does not exist): one dead letter from each
  handler taking its type.

On top, any record may carry hostile headers: null values, non-UTF-8 values, forged retry and origin
headers (``x-attempt``, ``x-due-at``, ``x-original-*``), or hundreds of headers. A record Kafka
refuses (over its size limit) never entered and is expected nowhere.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from bench.chaos.topology import Lane, handlers_on, handlers_taking, topic_spec
from bench.chaos.workload import BASE, MISSING_USERS, Record
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import (
    EVENT_TYPES,
    AlertRaised,
    BroadcastRequested,
    ChannelJoinRequested,
    DailyGiftClaimed,
    MessageContent,
    NotificationRequested,
    PostScheduled,
    Priority,
    SchedulerTick,
    SubscriptionExpiring,
    UserActivity,
)
from dianabot_contracts.topics import (
    ALERTS,
    BROADCASTS,
    CHANNELS,
    CONTENT,
    GAMIFICATION,
    NOTIFICATIONS_BULK,
    NOTIFICATIONS_CRITICAL,
    SCHEDULER_TICKS,
    SUBSCRIPTIONS,
    USERS,
)

NESTING = 200_000
HUGE_DIGITS = 5_000
# Over the broker's 1 MiB limit at publish time, just under it (its dead letter is not), well under.
OVERSIZED = (900_000, 1_047_000, 1_200_000)

TOPIC_WEIGHTS: dict[str, float] = {
    USERS.name: 0.20,
    GAMIFICATION.name: 0.14,
    SUBSCRIPTIONS.name: 0.12,
    NOTIFICATIONS_CRITICAL.name: 0.08,
    NOTIFICATIONS_BULK.name: 0.08,
    CHANNELS.name: 0.08,
    CONTENT.name: 0.08,
    BROADCASTS.name: 0.04,
    ALERTS.name: 0.03,
    SCHEDULER_TICKS.name: 0.05,
}
# Topics with one handler each take the large bodies (a dead letter per handler is as large).
LARGE_BODY_TOPICS = (CONTENT.name, CHANNELS.name, NOTIFICATIONS_BULK.name, NOTIFICATIONS_CRITICAL.name)
FAILING_TOPICS = (NOTIFICATIONS_CRITICAL.name, NOTIFICATIONS_BULK.name)

Json = dict[str, Any]


@dataclass(frozen=True)
class FuzzCase:
    fuzz_id: int
    category: str
    record: Record
    expected_handlers: frozenset[str]
    size: int


def _sample_payload(topic: str, n: int) -> EventPayload:
    """A well-formed payload of an event type the topic carries (for a missing user or entity)."""
    user = MISSING_USERS + n
    samples: dict[str, Callable[[], EventPayload]] = {
        USERS.name: lambda: UserActivity(user_id=user, at=BASE),
        GAMIFICATION.name: lambda: DailyGiftClaimed(user_id=user, claimed_at=BASE),
        SUBSCRIPTIONS.name: lambda: SubscriptionExpiring(
            user_id=user, subscription_id=n, end_at=BASE, reminder="1d"
        ),
        NOTIFICATIONS_CRITICAL.name: lambda: _notification(user, Priority.CRITICAL),
        NOTIFICATIONS_BULK.name: lambda: _notification(user, Priority.BULK),
        CHANNELS.name: lambda: ChannelJoinRequested(chat_id=-1, telegram_user_id=user, requested_at=BASE),
        CONTENT.name: lambda: PostScheduled(
            post_id=f"fuzz-{n}",
            channel_chat_id=-1,
            post_type="event",
            content=MessageContent(text="fuzz"),
            scheduled_for=BASE,
        ),
        BROADCASTS.name: lambda: BroadcastRequested(
            broadcast_id=f"fuzz-{n}", audience="list", user_ids=(user,), content=MessageContent(text="fuzz")
        ),
        ALERTS.name: lambda: AlertRaised(alert_key=f"fuzz-{n}", severity="warning", summary="fuzz"),
        SCHEDULER_TICKS.name: lambda: SchedulerTick(job="scheduled_daily_cleanup", slot=BASE),
    }
    return samples[topic]()


def _notification(user: int, priority: Priority) -> NotificationRequested:
    return NotificationRequested(user_id=user, content=MessageContent(text="fuzz: nobody"), priority=priority)


def _envelope(rng: random.Random, topic: str, n: int) -> EventEnvelope:
    payload = _sample_payload(topic, n)
    return EventEnvelope.wrap(
        payload,
        producer="chaos-fuzz",
        event_id=_uuid(rng),
        occurred_at=BASE + timedelta(seconds=n),
    )


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def _dump(body: Json) -> bytes:
    return json.dumps(body).encode()


# --- malformed bodies: each takes (rng, a well-formed envelope as JSON) ---------------------------


def random_bytes(rng: random.Random, body: Json) -> bytes | None:
    return rng.randbytes(rng.randrange(1, 2048))


def truncated_json(rng: random.Random, body: Json) -> bytes | None:
    text = _dump(body)
    return text[: rng.randrange(1, len(text) - 1)]


def deep_nesting(rng: random.Random, body: Json) -> bytes | None:
    """200,000 levels (arrays: 2 bytes a level keeps it under Kafka's 1 MiB; objects would not)."""
    nested = "[" * NESTING + '{"a": 1}' + "]" * NESTING
    variants = [
        nested,
        "[" * NESTING,  # never closed: the parser gives up on the depth before the end
        _dump(body).decode()[:-1] + ', "deep": ' + nested + "}",
    ]
    return rng.choice(variants).encode()


def huge_integer(rng: random.Random, body: Json) -> bytes | None:
    digits = "9" + "".join(rng.choice("0123456789") for _ in range(HUGE_DIGITS - 1))
    marker = "__huge__"
    where = rng.randrange(3)
    if where == 0:
        body["schema_version"] = marker
    elif where == 1:
        body["payload"][sorted(body["payload"])[0]] = marker
    else:
        body = {"n": marker}
    return _dump(body).replace(f'"{marker}"'.encode(), digits.encode())


def _wrong_envelope(rng: random.Random, body: Json) -> Json:
    mutations: list[Callable[[Json], None]] = [
        lambda b: b.update(event_id=12345),
        lambda b: b.update(event_id="not-a-uuid"),
        lambda b: b.update(occurred_at="yesterday"),
        lambda b: b.update(occurred_at="2030-01-01T00:00:00"),  # no offset: not an aware time
        lambda b: b.update(payload=[]),
        lambda b: b.update(payload="payload"),
        lambda b: b.update(schema_version=0),
        lambda b: b.update(event_type=123),
        lambda b: b.update(producer={"nested": True}),
        lambda b: b.pop("event_id"),
        lambda b: b.pop("key"),
        lambda b: b.pop("payload"),
    ]
    rng.choice(mutations)(body)
    return body


def wrong_types(rng: random.Random, body: Json) -> bytes | None:
    return _dump(_wrong_envelope(rng, body))


def payload_violation(rng: random.Random, body: Json) -> bytes | None:
    """A payload its event type's contract rejects (checked: a field with a default may go)."""
    model = EVENT_TYPES[body["event_type"]]
    for _ in range(50):
        payload: Json = dict(body["payload"])
        field = rng.choice(sorted(payload))
        mutation = rng.randrange(4)
        if mutation == 0:
            payload.pop(field)
        else:
            payload[field] = [{"not": "this"}, None, "not a number"][mutation - 1]
        try:
            model.model_validate(payload)
        except ValidationError:
            return _dump({**body, "payload": payload})
    return _dump({**body, "payload": None})


def unknown_type(rng: random.Random, body: Json) -> bytes | None:
    body["event_type"] = rng.choice(["user.teleported", "", "USER.ACTIVITY", "user.activity ", "x" * 300])
    return _dump(body)


def not_an_object(rng: random.Random, body: Json) -> bytes | None:
    return rng.choice([b"[1, 2, 3]", b'"an envelope"', b"42", b"true", b"null", b"[{}]"])


def empty_or_null(rng: random.Random, body: Json) -> bytes | None:
    return rng.choice([b"", None, b" ", b"\n"])


def invalid_utf8(rng: random.Random, body: Json) -> bytes | None:
    text = _dump(body)
    return text.replace(b'"producer": "chaos-fuzz"', b'"producer": "\xff\xfe\xc3\x28"', 1)


def nan_values(rng: random.Random, body: Json) -> bytes | None:
    text = _dump(body).decode()
    literal = rng.choice(["NaN", "Infinity", "-Infinity"])
    return text.replace('"schema_version": 1', f'"schema_version": {literal}').encode()


def duplicate_keys(rng: random.Random, body: Json) -> bytes | None:
    """The last of two equal keys wins in Python's parser: the second event_id is no UUID."""
    return _dump(body)[:-1] + b', "event_id": "not-a-uuid"}'


MALFORMED: dict[str, tuple[float, int, Callable[[random.Random, Json], bytes | None]]] = {
    # name: (share, at least, body maker)
    "random_bytes": (0.10, 5, random_bytes),
    "truncated_json": (0.10, 5, truncated_json),
    "deep_nesting": (0.04, 5, deep_nesting),
    "huge_integer": (0.05, 5, huge_integer),
    "wrong_types": (0.13, 5, wrong_types),
    "payload_violation": (0.11, 5, payload_violation),
    "unknown_type": (0.08, 5, unknown_type),
    "not_an_object": (0.05, 5, not_an_object),
    "empty_or_null": (0.04, 4, empty_or_null),
    "invalid_utf8": (0.04, 4, invalid_utf8),
    "nan_values": (0.02, 3, nan_values),
    "duplicate_keys": (0.02, 3, duplicate_keys),
}
FAILING_SHARE = 0.15
OVERSIZED_SHARE = 0.012


# --- hostile headers -----------------------------------------------------------------------------

Headers = list[tuple[str, bytes | None]]


def _forged_retry(rng: random.Random) -> Headers:
    options: Headers = [
        ("x-attempt", rng.choice([b"abc", b"99", b"-1", b"1e9", b"", b"2"])),
        ("x-due-at", rng.choice([b"9999999999999", b"-5", b"soon", b""])),
        ("x-original-topic", rng.choice([b"dianabot.payments", b"", b"\xff"])),
        ("x-original-partition", rng.choice([b"abc", b"99", b"-1"])),
        ("x-original-offset", rng.choice([b"x", b"-1", b"123456789012345678901234567890"])),
        ("x-last-error", b"forged"),
        ("x-dlq-handler", b"dianabot.nobody"),
    ]
    return rng.sample(options, rng.randrange(1, len(options) + 1))


def hostile_headers(rng: random.Random, envelope: EventEnvelope) -> Headers:
    headers: Headers = []
    if rng.random() < 0.5:
        headers += [(k, v.encode()) for k, v in envelope.to_headers().items()]
    if rng.random() < 0.15:
        headers.append((rng.choice(["x-chaos-null", "event_id", "traceparent"]), None))
    if rng.random() < 0.15:
        headers.append((rng.choice(["x-chaos-binary", "event_type", "traceparent"]), b"\xff\xfe\x00\xc3\x28"))
    if rng.random() < 0.2:
        headers += _forged_retry(rng)
    if rng.random() < 0.02:
        headers += [(f"x-chaos-{i}", b"v") for i in range(300)]
    return headers


# --- the cases -----------------------------------------------------------------------------------


def _counts(total: int) -> list[tuple[str, int]]:
    counts = [(name, max(least, round(total * share))) for name, (share, least, _) in MALFORMED.items()]
    counts.append(("failing", max(5, round(total * FAILING_SHARE))))
    counts.append(("oversized", max(len(OVERSIZED), round(total * OVERSIZED_SHARE))))
    surplus = sum(n for _, n in counts) - total
    name, n = counts[0]
    counts[0] = (name, max(1, n - surplus))
    return counts


def _case(rng: random.Random, lanes: list[Lane], n: int, category: str, ordinal: int) -> FuzzCase:
    topic = _topic_for(rng, category)
    envelope = _envelope(rng, topic, n)
    body: Json = json.loads(envelope.to_body())
    expected = handlers_on(lanes, topic)
    if category == "failing":
        value: bytes | None = envelope.to_body()
        expected = handlers_taking(lanes, topic, envelope.event_type)
    elif category == "oversized":
        size = OVERSIZED[ordinal % len(OVERSIZED)]
        value = b'{"event_id": "' + str(envelope.event_id).encode() + b'", "padding": "' + b"x" * size + b'"}'
    else:
        value = MALFORMED[category][2](rng, body)
    headers = hostile_headers(rng, envelope)
    partition = rng.randrange(topic_spec(topic).partitions)
    key = f"chaos:fuzz:{n}".encode()
    record = Record(topic, key, value, tuple(headers), partition, fuzz_id=n, label=category)
    return FuzzCase(n, category, record, expected, len(value or b""))


def _topic_for(rng: random.Random, category: str) -> str:
    if category == "failing":
        return rng.choice(FAILING_TOPICS)
    if category == "oversized":
        return rng.choice(LARGE_BODY_TOPICS)
    names = list(TOPIC_WEIGHTS)
    return rng.choices(names, weights=[TOPIC_WEIGHTS[t] for t in names])[0]


def build(seed: int, total: int, lanes: list[Lane]) -> list[FuzzCase]:
    """`total` hostile records (at least a few of each kind), shuffled."""
    if total <= 0:
        return []
    rng = random.Random(seed * 7919 + 1)
    categories = [(name, i) for name, count in _counts(total) for i in range(count)]
    rng.shuffle(categories)
    return [_case(rng, lanes, n, name, i) for n, (name, i) in enumerate(categories, start=1)]
