"""The valid traffic of a chaos run: the rows it needs first, and its events in publish order.

Everything follows from the seed: ids, times, the mix of event types, which events are published
twice (the same ``event_id`` again, a little later) and the order. Business times lie in 2030, so
none of the real scheduler's jobs (expiry, reminders, streak resets, approvals) touches them
during the run, and every handler's outcome is known in advance.

Users are grouped by what the suite does to them (ids are also their Telegram chat ids):
activity, daily-gift, mission, reminder and notification users exist before the run;
registration users are created by ``user.registered`` events.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import (
    BesitosEarned,
    ChannelJoinRequested,
    DailyGiftClaimed,
    MessageContent,
    MissionCompleted,
    NotificationRequested,
    PostScheduled,
    Priority,
    SubscriptionExpiring,
    UserActivity,
    UserRegistered,
)
from dianabot_contracts.topics import topic_for

PRODUCER = "chaos"
BASE = datetime(2030, 1, 1, tzinfo=UTC)
MISSION_PERIOD = date(2030, 1, 1)
MISSIONS_PER_USER = 3

# Id ranges (users.id = telegram_id): one range per role, so a chat tells which messages it expects.
ACTIVITY_USERS = 10_000_000
GIFT_USERS = 20_000_000
MISSION_USERS = 30_000_000
REMINDER_USERS = 40_000_000
NOTIFIED_USERS = 50_000_000
REGISTERED_USERS = 60_000_000
MISSING_USERS = 90_000_000  # never created: events for them fail for good
JOIN_CHATS = (-1_009_000_000_001, -1_009_000_000_002, -1_009_000_000_003)
POST_CHATS = (-1_008_000_000_001, -1_008_000_000_002)

# Share of the distinct events per kind (sums to 1).
MIX: dict[str, float] = {
    "user.activity": 0.50,
    "user.registered": 0.08,
    "channel.join_requested": 0.12,
    "post.scheduled": 0.12,
    "gamification.daily_gift_claimed": 0.05,
    "gamification.mission_completed": 0.03,
    "subscription.expiring": 0.03,
    "notification.requested": 0.04,
    "gamification.besitos_earned": 0.03,  # no handler takes it: ignored by both gamification handlers
}


@dataclass(frozen=True)
class Record:
    """One record the producer publishes (``partition`` None: chosen by the key, as services do)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    partition: int | None = None
    fuzz_id: int | None = None
    label: str = ""


@dataclass
class Fixtures:
    """Rows written before the run (the bot's side of the world)."""

    users: list[int] = field(default_factory=list)
    subscriptions: list[tuple[int, int, datetime]] = field(default_factory=list)  # (id, user, end_at)
    missions: list[tuple[int, str, int]] = field(default_factory=list)  # (id, key, besitos)
    user_missions: list[tuple[int, int]] = field(default_factory=list)  # (user, mission id)


@dataclass
class Workload:
    fixtures: Fixtures
    stream: list[Record]
    distinct_events: int


def event_id(rng: random.Random, index: int) -> UUID:
    """A UUIDv7 whose time is BASE + index ms and whose random bits come from the seed."""
    ms = int(BASE.timestamp() * 1000) + index
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return UUID(int=value)


def envelope_record(
    envelope: EventEnvelope, topic: str, extra: tuple[tuple[str, bytes | None], ...] = ()
) -> Record:
    headers = tuple((k, v.encode()) for k, v in envelope.to_headers().items()) + extra
    return Record(topic, envelope.key.encode(), envelope.to_body(), headers, label=envelope.event_type)


class _Builder:
    """Makes the events of each kind, each kind's in the order its keys need."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fixtures = Fixtures()
        self._index = 0

    def wrap(self, payload: EventPayload) -> EventEnvelope:
        self._index += 1
        return EventEnvelope.wrap(
            payload,
            producer=PRODUCER,
            event_id=event_id(self.rng, self._index),
            occurred_at=BASE + timedelta(milliseconds=self._index),
        )

    def users(self, base: int, count: int) -> list[int]:
        ids = [base + i for i in range(1, count + 1)]
        self.fixtures.users += ids
        return ids

    def activity(self, count: int) -> Iterator[EventPayload]:
        users = self.users(ACTIVITY_USERS, max(20, count // 5))
        for _ in range(count):
            at = BASE + timedelta(seconds=self.rng.randrange(30 * 86_400))
            yield UserActivity(
                user_id=self.rng.choice(users), at=at, kind=self.rng.choice(["message", "command"])
            )

    def registrations(self, count: int) -> Iterator[EventPayload]:
        for i in range(1, count + 1):
            user = REGISTERED_USERS + i
            yield UserRegistered(user_id=user, telegram_id=user, username=f"chaos{i}", language_code="es")

    def join_requests(self, count: int) -> Iterator[EventPayload]:
        made = 0
        while made < count:
            chat, person = self.rng.choice(JOIN_CHATS), 70_000_000 + made
            at = BASE + timedelta(minutes=made)
            yield ChannelJoinRequested(chat_id=chat, telegram_user_id=person, requested_at=at)
            made += 1
            if made < count and self.rng.random() < 0.15:  # asked again later: the first time stays
                yield ChannelJoinRequested(
                    chat_id=chat, telegram_user_id=person, requested_at=at + timedelta(hours=1)
                )
                made += 1

    def posts(self, count: int) -> Iterator[EventPayload]:
        made, post = 0, 0
        while made < count:
            post += 1
            versions = 1 + (self.rng.random() < 0.3) + (self.rng.random() < 0.1)
            for version in range(1, min(versions, count - made) + 1):
                yield PostScheduled(
                    post_id=f"chaos-post-{post}",
                    channel_chat_id=self.rng.choice(POST_CHATS),
                    post_type="announcement",
                    content=MessageContent(text=f"chaos post {post} v{version}"),
                    scheduled_for=BASE + timedelta(days=400, minutes=post),
                )
                made += 1

    def daily_gifts(self, count: int) -> Iterator[EventPayload]:
        """Per user: claims a day apart (each pays, the streak grows) and one second press within
        the hour (pays nothing)."""
        users = self.users(GIFT_USERS, max(1, count // 5))
        per_user = [self._claims(user) for user in users]
        claims = [claim for claims in per_user for claim in claims]
        yield from claims[:count]

    def _claims(self, user: int) -> list[EventPayload]:
        first = BASE + timedelta(days=60, hours=self.rng.randrange(24))
        times = [first + timedelta(days=d) for d in range(4)]
        repeat = self.rng.randrange(4)
        times.insert(repeat + 1, times[repeat] + timedelta(hours=1))
        return [DailyGiftClaimed(user_id=user, claimed_at=t) for t in times]

    def missions(self, count: int) -> Iterator[EventPayload]:
        """Per user: each of its missions completed once, one of them completed a second time."""
        users = self.users(MISSION_USERS, max(1, count // (MISSIONS_PER_USER + 1)))
        self.fixtures.missions = [(i, f"chaos_mission_{i}", 5 * i) for i in range(1, MISSIONS_PER_USER + 1)]
        events: list[EventPayload] = []
        for user in users:
            keys = [key for _, key, _ in self.fixtures.missions]
            self.fixtures.user_missions += [(user, mission) for mission, _, _ in self.fixtures.missions]
            keys.append(self.rng.choice(keys))
            events += [
                MissionCompleted(user_id=user, mission_key=k, period_start=MISSION_PERIOD) for k in keys
            ]
        yield from events[:count]

    def reminders(self, count: int) -> Iterator[EventPayload]:
        """One reminder per subscription (a window's reminder comes days after the previous one in
        real life, so one user never gets several at once)."""
        users = self.users(REMINDER_USERS, count)
        for n, user in enumerate(users, start=1):
            end_at = BASE + timedelta(days=500, minutes=n)
            self.fixtures.subscriptions.append((n, user, end_at))
            kind = self.rng.choice(("7d", "3d", "1d"))
            yield SubscriptionExpiring(user_id=user, subscription_id=n, end_at=end_at, reminder=kind)

    def notifications(self, count: int) -> Iterator[EventPayload]:
        users = self.users(NOTIFIED_USERS, max(1, count // 4))
        for n in range(count):
            priority = Priority.CRITICAL if n % 3 == 0 else Priority.BULK
            text = f"chaos notification #{n}"
            yield NotificationRequested(
                user_id=users[n % len(users)], content=MessageContent(text=text), priority=priority
            )

    def besitos(self, count: int) -> Iterator[EventPayload]:
        for n in range(count):
            yield BesitosEarned(
                user_id=ACTIVITY_USERS + 1,
                amount=1,
                source="chaos",
                balance_after=n + 1,
                idempotency_key=f"chaos:{n}",
            )


def _kinds(builder: _Builder) -> dict[str, Callable[[int], Iterator[EventPayload]]]:
    return {
        "user.activity": builder.activity,
        "user.registered": builder.registrations,
        "channel.join_requested": builder.join_requests,
        "post.scheduled": builder.posts,
        "gamification.daily_gift_claimed": builder.daily_gifts,
        "gamification.mission_completed": builder.missions,
        "subscription.expiring": builder.reminders,
        "notification.requested": builder.notifications,
        "gamification.besitos_earned": builder.besitos,
    }


def _interleave(rng: random.Random, queues: list[list[EventPayload]]) -> list[EventPayload]:
    """Merge the kinds at random while keeping each kind's own order (so each key's order)."""
    tokens = [i for i, queue in enumerate(queues) for _ in queue]
    rng.shuffle(tokens)
    positions = [0] * len(queues)
    merged = []
    for kind in tokens:
        merged.append(queues[kind][positions[kind]])
        positions[kind] += 1
    return merged


def _with_duplicates(rng: random.Random, records: list[Record], copies: int) -> list[Record]:
    """Publish `copies` records a second time, each a little after its original (a retrying producer)."""
    if not records:
        return records
    later: dict[int, list[Record]] = {}
    for _ in range(copies):
        original = rng.randrange(len(records))
        later.setdefault(min(len(records) - 1, original + rng.randrange(1, 400)), []).append(
            records[original]
        )
    out = []
    for i, record in enumerate(records):
        out.append(record)
        out += later.get(i, [])
    return out


BINARY_NOTE = ("x-chaos-note", b"\xff\xfe binary, not UTF-8")


def build(seed: int, events: int, duplicate_ratio: float) -> Workload:
    """`events` valid records, of which about `duplicate_ratio` repeat an earlier event."""
    rng = random.Random(seed)
    distinct = round(events / (1 + duplicate_ratio))
    builder = _Builder(rng)
    kinds = _kinds(builder)
    queues = [list(kinds[kind](round(distinct * share))) for kind, share in MIX.items()]
    records = []
    for payload in _interleave(rng, queues):
        envelope = builder.wrap(payload)
        # A header the service does not use, not UTF-8: the event must still be handled.
        extra = (BINARY_NOTE,) if rng.random() < 0.01 else ()
        records.append(envelope_record(envelope, topic_for(payload).name, extra))
    stream = _with_duplicates(rng, records, events - len(records))
    return Workload(builder.fixtures, stream, len(records))
