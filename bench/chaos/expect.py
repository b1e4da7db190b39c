"""What the service must have done for the valid events that entered Kafka (read back, in order).

Derived from the records as they landed (a publish retried after a broker restart may have landed
twice, and only the broker's order counts), the fixtures and the domain rules:

* one ledger row per (handler taking the type, distinct event id); none for ignored types;
* ``user.registered``: the user row; ``user.activity``: ``last_active_at`` = the latest ``at``;
* ``channel.join_requested``: the request row, with the first ``requested_at`` of its pair;
* ``post.scheduled``: the post, with the text of its last version;
* ``gamification.daily_gift_claimed``: the claims that pay (a day or more apart) are transactions
  keyed by the claim, with the streak bonus on day 3, and one message each;
* ``gamification.mission_completed``: the first completion of an assigned mission pays its
  besitos (one transaction) and sends one message; a repeat pays nothing;
* ``subscription.expiring``: one reminder per event (the send ledger's key names the event);
* ``notification.requested``: one message per event, with its text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from bench.chaos.topology import Lane, handlers_taking
from bench.chaos.workload import MISSION_PERIOD, Fixtures
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import (
    EVENT_TYPES,
    ChannelJoinRequested,
    DailyGiftClaimed,
    MissionCompleted,
    NotificationRequested,
    PostScheduled,
    SubscriptionExpiring,
    UserActivity,
    UserRegistered,
)
from dianabot_core.domain.gamification import (
    DAILY_GIFT_SOURCE,
    STREAK_SOURCE,
    DailyGiftRules,
    award_key,
    daily_gift_key,
    next_streak,
)


@dataclass
class Expected:
    ledger: set[tuple[str, UUID]] = field(default_factory=set)
    ignored: set[UUID] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    last_active: dict[int, datetime] = field(default_factory=dict)
    join_requests: dict[tuple[int, int], datetime] = field(default_factory=dict)
    posts: dict[str, str | None] = field(default_factory=dict)
    transactions: dict[str, int] = field(default_factory=dict)  # idempotency key -> amount
    reminder_sends: set[str] = field(default_factory=set)
    messages: Counter[int] = field(default_factory=Counter)  # chat -> messages
    texts: Counter[tuple[int, str]] = field(default_factory=Counter)  # notifications' exact texts


@dataclass
class _GiftState:
    streak: int = 0
    last: datetime | None = None


class Model:
    """Feeds on landed events in broker order; duplicates (a seen event id) change nothing."""

    def __init__(self, lanes: list[Lane], fixtures: Fixtures) -> None:
        self.lanes = lanes
        self.expected = Expected()
        self.seen: set[UUID] = set()
        self.rules = DailyGiftRules()
        self.gifts: dict[int, _GiftState] = {}
        self.besitos = {key: amount for _, key, amount in fixtures.missions}
        self.assigned = {(user, mission) for user, mission in fixtures.user_missions}
        self.mission_ids = {key: mission for mission, key, _ in fixtures.missions}
        self.subscriptions = {sid: end_at for sid, _, end_at in fixtures.subscriptions}
        self.users = set(fixtures.users)
        self.paid_missions: set[str] = set()

    def add(self, topic: str, envelope: EventEnvelope) -> None:
        if envelope.event_id in self.seen:
            return
        self.seen.add(envelope.event_id)
        handlers = handlers_taking(self.lanes, topic, envelope.event_type)
        if not handlers:
            self.expected.ignored.add(envelope.event_id)
        self.expected.ledger |= {(handler, envelope.event_id) for handler in handlers}
        payload = EVENT_TYPES[envelope.event_type].model_validate(envelope.payload)
        effect = self._effects().get(type(payload))
        if effect is not None:
            effect(payload, envelope)

    def _effects(self) -> dict[type, Callable[[Any, EventEnvelope], None]]:
        return {
            UserRegistered: self._registration,
            UserActivity: self._activity,
            ChannelJoinRequested: self._join_request,
            PostScheduled: self._post,
            DailyGiftClaimed: self._gift,
            MissionCompleted: self._mission,
            SubscriptionExpiring: self._reminder,
            NotificationRequested: self._notification,
        }

    def _registration(self, payload: UserRegistered, _: EventEnvelope) -> None:
        self.expected.users.add(payload.user_id)

    def _activity(self, payload: UserActivity, _: EventEnvelope) -> None:
        user, at = payload.user_id, payload.at
        if user in self.users:
            self.expected.last_active[user] = max(at, self.expected.last_active.get(user, at))

    def _join_request(self, payload: ChannelJoinRequested, _: EventEnvelope) -> None:
        pair = (payload.chat_id, payload.telegram_user_id)
        self.expected.join_requests.setdefault(pair, payload.requested_at)

    def _post(self, payload: PostScheduled, _: EventEnvelope) -> None:
        self.expected.posts[payload.post_id] = payload.content.text

    def _gift(self, payload: DailyGiftClaimed, _: EventEnvelope) -> None:
        user, claimed_at = payload.user_id, payload.claimed_at
        state = self.gifts.setdefault(user, _GiftState())
        days = next_streak(state.streak, state.last, claimed_at, self.rules)
        if days is None:
            return
        state.streak, state.last = days, claimed_at
        self.expected.transactions[daily_gift_key(user, claimed_at, DAILY_GIFT_SOURCE)] = self.rules.base
        bonus = self.rules.bonuses.get(days, 0)
        if bonus:
            self.expected.transactions[daily_gift_key(user, claimed_at, STREAK_SOURCE)] = bonus
        self.expected.messages[user] += 1

    def _mission(self, payload: MissionCompleted, _: EventEnvelope) -> None:
        user, key = payload.user_id, payload.mission_key
        transaction = award_key(user, key, MISSION_PERIOD)
        if (user, self.mission_ids.get(key)) not in self.assigned or transaction in self.paid_missions:
            return
        self.paid_missions.add(transaction)
        self.expected.transactions[transaction] = self.besitos[key]
        self.expected.messages[user] += 1

    def _reminder(self, payload: SubscriptionExpiring, envelope: EventEnvelope) -> None:
        if self.subscriptions.get(payload.subscription_id) == payload.end_at:
            self.expected.reminder_sends.add(f"subscription.reminder:{envelope.event_id}")
            self.expected.messages[payload.user_id] += 1

    def _notification(self, payload: NotificationRequested, _: EventEnvelope) -> None:
        user = payload.user_id
        if user in self.users:
            self.expected.messages[user] += 1
            self.expected.texts[(user, str(payload.content and payload.content.text))] += 1
