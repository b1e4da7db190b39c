"""The daily gift and its streak on the real pipeline: claims over Kafka pay once per 24 h through
the besitos machinery, streaks extend, hit milestones and restart; the midnight job breaks old ones."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import gamification
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import DailyGiftClaimed
from dianabot_contracts.ids import derived_event_id
from dianabot_core.domain.gamification import daily_gift_key
from dianabot_core.domain.settings import GamificationSettings
from dianabot_core.jobs import JobRunStatus
from dianabot_core.models import Balance, DailyGiftStreak, Transaction
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_gamification_support import (
    World,
    consuming,
    era,
    new_registry,
    outbox_for_users,
    tick,
    unique_topic,
    wait_for_ledger,
    wait_for_run,
)

H = timedelta(hours=1)
RESET = "scheduled_daily_streak_reset"
SETTINGS = GamificationSettings(daily_gift_base=10, daily_gift_bonuses={3: 100})


@pytest.fixture
async def world(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    created = World(session_factory)
    yield created
    await created.cleanup()


def claim(user_id: int, at: datetime) -> EventEnvelope:
    return EventEnvelope.wrap(DailyGiftClaimed(user_id=user_id, claimed_at=at), producer="test")


async def _streak(sessions: async_sessionmaker[AsyncSession], user_id: int) -> tuple[int, datetime]:
    async with sessions() as session:
        row = await session.get(DailyGiftStreak, user_id)
    assert row is not None
    return row.streak_days, row.last_claimed_at


async def _ledger(
    sessions: async_sessionmaker[AsyncSession], user_id: int
) -> tuple[int, list[tuple[str, int]]]:
    """The balance and the user's transactions as (idempotency key, amount), in order."""
    async with sessions() as session:
        balance = await session.scalar(select(Balance.amount).where(Balance.user_id == user_id))
        rows = await session.execute(
            select(Transaction.idempotency_key, Transaction.amount)
            .where(Transaction.user_id == user_id)
            .order_by(Transaction.id)
        )
        return int(balance or 0), [(key, amount) for key, amount in rows]


async def test_claims_pay_once_per_day_extend_the_streak_pay_the_milestone_and_restart_after_48_hours(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    user = await world.user(last_active_at=None, language="en")
    day0 = era()
    topic = unique_topic("gamification", partitions=1)
    group = gamification.build_handlers(module=f"g{uuid.uuid4().hex[:8]}", topic=topic)
    handler = next(spec.name for spec in group.specs if spec.name.endswith(".claim_daily_gift"))
    first = claim(user, day0)
    claims = [
        first,
        first,  # redelivered
        claim(user, day0),  # the same press, carried by another event
        claim(user, day0 + 12 * H),  # a second press within the cooldown
        claim(user, day0 + 25 * H),  # day 2
        claim(user, day0 + 70 * H),  # day 3, 45 h later: still a streak, the milestone
        claim(user, day0 + 119 * H),  # 49 h later: the streak starts again
    ]
    async with consuming(kafka, [group], Services(gamification=SETTINGS)), RawProducer(kafka) as producer:
        await producer.send_events(topic.name, claims)
        await wait_for_ledger(session_factory, handler, len({c.event_id for c in claims}))
        await producer.send_event(topic.name, first)  # and once more, after everything
        await wait_for_ledger(session_factory, handler, len({c.event_id for c in claims}))

    balance, transactions = await _ledger(session_factory, user)
    assert transactions == [
        (daily_gift_key(user, day0), 10),
        (daily_gift_key(user, day0 + 25 * H), 10),
        (daily_gift_key(user, day0 + 70 * H), 10),
        (daily_gift_key(user, day0 + 70 * H, "streak"), 100),
        (daily_gift_key(user, day0 + 119 * H), 10),
    ]
    assert balance == 140
    assert await _streak(session_factory, user) == (1, day0 + 119 * H)
    earned = await outbox_for_users(session_factory, [user], "gamification.besitos_earned")
    assert [(e.body["payload"]["source"], e.body["payload"]["balance_after"]) for e in earned] == [
        ("daily_reward", 10),
        ("daily_reward", 20),
        ("daily_reward", 30),
        ("streak", 130),
        ("daily_reward", 140),
    ]
    assert earned[0].event_id == derived_event_id("gamification.besitos_earned", daily_gift_key(user, day0))
    notices = await outbox_for_users(session_factory, [user], "notification.requested")
    assert [n.body["payload"]["content"]["text"].split(" Balance")[0] for n in notices] == [
        "🎁 Daily gift: +10 besitos. Streak: 1 days.",
        "🎁 Daily gift: +10 besitos. Streak: 2 days.",
        "🎁 Daily gift: +110 besitos. Streak: 3 days.",
        "🎁 Daily gift: +10 besitos. Streak: 1 days.",
    ]


async def test_streak_reset_breaks_only_streaks_last_claimed_over_48_hours_before_the_slot(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    slot = era()
    shapes = {  # user -> (streak days, hours since the last claim, streak days after the job)
        await world.user(last_active_at=None): (5, 49, 0),
        await world.user(last_active_at=None): (12, 72, 0),
        await world.user(last_active_at=None): (2, 47, 2),
        await world.user(last_active_at=None): (1, 1, 1),
        await world.user(last_active_at=None): (0, 100, 0),  # broken already: not counted again
    }
    async with session_factory() as session, session.begin():
        await session.execute(
            insert(DailyGiftStreak),
            [
                {"user_id": user, "streak_days": days, "last_claimed_at": slot - hours * H}
                for user, (days, hours, _) in shapes.items()
            ],
        )

    topic = unique_topic("ticks")
    registry = new_registry()
    gamification.register_jobs(registry, ticks=(topic,))
    first, again = tick(RESET, slot), tick(RESET, slot)
    services = Services(gamification=GamificationSettings(batch_size=1))  # one row per batch
    async with consuming(kafka, [registry.group], services), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, first)
        first_run = await wait_for_run(session_factory, first.event_id)
        await producer.send_event(topic.name, again)
        again_run = await wait_for_run(session_factory, again.event_id)

    assert first_run.status is JobRunStatus.FINISHED, first_run.error
    # Other tests' streaks from earlier stretches of time may be broken too, never fewer than these.
    assert first_run.counts["streaks_reset"] >= 2
    assert again_run.counts == {"streaks_reset": 0}
    async with session_factory() as session:
        rows = await session.execute(
            select(DailyGiftStreak.user_id, DailyGiftStreak.streak_days).where(
                DailyGiftStreak.user_id.in_(shapes)
            )
        )
        after = {user: days for user, days in rows}
        untouched = await session.scalar(
            select(func.count()).where(
                DailyGiftStreak.user_id.in_(shapes), DailyGiftStreak.last_claimed_at >= slot
            )
        )
    assert after == {user: expected for user, (_, _, expected) in shapes.items()}
    assert untouched == 0
