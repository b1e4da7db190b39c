"""Missions and besitos on the real pipeline: assignment, weekly reset, the award, the leaderboard."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import gamification
from consumers.gamification import free_channel
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import MissionAssigned, MissionCompleted, PostScheduled
from dianabot_contracts.ids import derived_event_id
from dianabot_core.domain.gamification import award_key, award_mission, local_day
from dianabot_core.domain.settings import GamificationSettings
from dianabot_core.jobs import JobRunStatus
from dianabot_core.models import (
    Balance,
    ChannelKind,
    Mission,
    MissionType,
    Transaction,
    TransactionType,
    UserMission,
    UserMissionStatus,
    UserState,
)
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_gamification_support import (
    World,
    consuming,
    era,
    new_registry,
    outbox_caused_by,
    outbox_for_users,
    tick,
    unique_topic,
    wait_for_ledger,
    wait_for_run,
)

MADRID = ZoneInfo("Europe/Madrid")
SERVICES = Services(timezone=MADRID)
ASSIGN = "scheduled_daily_mission_assignment"
WEEKLY = "scheduled_weekly_mission_reset"
LEADERBOARD = "scheduled_weekly_leaderboard"


@pytest.fixture
async def world(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    created = World(session_factory)
    yield created
    await created.cleanup()


async def _user_missions(
    sessions: async_sessionmaker[AsyncSession], user_ids: list[int]
) -> list[UserMission]:
    async with sessions() as session:
        rows = await session.scalars(
            select(UserMission)
            .where(UserMission.user_id.in_(user_ids))
            .order_by(UserMission.period_start, UserMission.user_id, UserMission.mission_id)
        )
        return list(rows)


async def test_daily_assignment_assigns_active_users_once_prompts_them_and_expires_yesterdays(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    slot = era()
    recent = slot - timedelta(days=2)
    active = [await world.user(last_active_at=recent), await world.user(last_active_at=recent, language="en")]
    others = [
        await world.user(last_active_at=recent, state=UserState.BANNED),
        await world.user(last_active_at=recent, blocked=True),
        await world.user(last_active_at=slot - timedelta(days=31)),
        await world.user(last_active_at=None),
    ]
    daily = [await world.mission(MissionType.DAILY, 10), await world.mission(MissionType.DAILY, 20)]
    await world.mission(MissionType.DAILY, 30, active=False)
    await world.mission(MissionType.WEEKLY, 40)

    topic = unique_topic("ticks")
    registry = new_registry()
    gamification.register_jobs(registry, ticks=(topic,))
    settings = GamificationSettings(batch_size=1)  # one user per page: the keyset pagination is exercised
    first, again, next_day = tick(ASSIGN, slot), tick(ASSIGN, slot), tick(ASSIGN, slot + timedelta(days=1))
    async with (
        consuming(kafka, [registry.group], replace(SERVICES, gamification=settings)),
        RawProducer(kafka) as producer,
    ):
        await producer.send_event(topic.name, first)
        first_run = await wait_for_run(session_factory, first.event_id)
        await producer.send_event(topic.name, again)  # another tick of the same day: a no-op
        again_run = await wait_for_run(session_factory, again.event_id)
        rows = await _user_missions(session_factory, active + others)
        await producer.send_event(topic.name, next_day)
        next_run = await wait_for_run(session_factory, next_day.event_id)

    assert first_run.status is JobRunStatus.FINISHED, first_run.error
    assert first_run.counts["missions_assigned"] >= 4
    assert again_run.counts["missions_assigned"] == 0
    today = local_day(slot, MADRID)
    assert {(r.user_id, r.mission_id) for r in rows} == {(u, m.id) for u in active for m in daily}
    assert {(r.period_start, r.expires_at, r.status) for r in rows} == {
        (today.start, today.ends_at, UserMissionStatus.ACTIVE)
    }
    assert today.ends_at.astimezone(MADRID).hour == 0

    assigned = await outbox_for_users(session_factory, active, MissionAssigned.event_type)
    prompts = await outbox_for_users(session_factory, active, "notification.requested")
    expected_ids = {
        derived_event_id(MissionAssigned.event_type, u, m.key, today.start.isoformat())
        for u in active
        for m in daily
    }
    today_assigned = [e for e in assigned if e.body["payload"]["period_start"] == today.start.isoformat()]
    assert {e.event_id for e in today_assigned} == expected_ids
    today_prompts = [e for e in prompts if e.body["causation_id"] == str(first.event_id)]
    assert len(today_prompts) == 4
    assert {e.body["payload"]["priority"] for e in today_prompts} == {"bulk"}
    texts = {e.body["payload"]["content"]["text"] for e in today_prompts}
    assert any(t.startswith("🎯 New mission") for t in texts)
    assert any(t.startswith("🎯 Nueva misión") for t in texts)

    assert next_run.status is JobRunStatus.FINISHED, next_run.error
    after = await _user_missions(session_factory, active + others)
    tomorrow = local_day(slot + timedelta(days=1), MADRID).start
    assert sorted((r.period_start, r.status) for r in after) == sorted(
        [(today.start, UserMissionStatus.EXPIRED)] * 4 + [(tomorrow, UserMissionStatus.ACTIVE)] * 4
    )


async def test_weekly_reset_expires_last_weeks_missions_and_assigns_this_weeks(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    local = era().astimezone(MADRID)
    monday = datetime.combine(local.date() - timedelta(days=local.weekday()), datetime.min.time(), MADRID)
    user = await world.user(last_active_at=monday - timedelta(days=1))
    weekly = await world.mission(MissionType.WEEKLY, 50)
    daily = await world.mission(MissionType.DAILY, 5)

    topic = unique_topic("ticks")
    registry = new_registry()
    gamification.register_jobs(registry, ticks=(topic,))
    this_week, next_week = tick(WEEKLY, monday), tick(WEEKLY, monday + timedelta(days=7))
    async with consuming(kafka, [registry.group], SERVICES), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, this_week)
        assert (await wait_for_run(session_factory, this_week.event_id)).status is JobRunStatus.FINISHED
        await producer.send_event(topic.name, next_week)
        run = await wait_for_run(session_factory, next_week.event_id)

    assert run.status is JobRunStatus.FINISHED, run.error
    rows = await _user_missions(session_factory, [user])
    assert [(r.mission_id, r.period_start, r.status) for r in rows] == [
        (weekly.id, monday.date(), UserMissionStatus.EXPIRED),
        (weekly.id, monday.date() + timedelta(days=7), UserMissionStatus.ACTIVE),
    ]
    assert rows[1].expires_at == monday + timedelta(days=14)
    assert daily.id not in {r.mission_id for r in rows}


async def _assign(
    sessions: async_sessionmaker[AsyncSession], user_id: int, mission: Mission, day: date
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            insert(UserMission).values(
                user_id=user_id, mission_id=mission.id, period_start=day, status=UserMissionStatus.ACTIVE
            )
        )


def _completed(user_id: int, mission: Mission, day: date) -> EventEnvelope:
    payload = MissionCompleted(user_id=user_id, mission_key=mission.key, period_start=day)
    return EventEnvelope.wrap(payload, producer="test")


async def _balance(sessions: async_sessionmaker[AsyncSession], user_id: int) -> tuple[int, int, int, int]:
    """(amount, total_earned, number of transactions, their sum)."""
    async with sessions() as session:
        balance = await session.get(Balance, user_id)
        count, total = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(Transaction.amount), 0)).where(
                    Transaction.user_id == user_id
                )
            )
        ).one()
    assert balance is not None
    return balance.amount, balance.total_earned, count, total


async def test_a_completion_delivered_twice_and_carried_by_two_events_is_paid_once(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    day = era().date()
    user = await world.user(last_active_at=None)
    mission = await world.mission(MissionType.DAILY, 15)
    await _assign(session_factory, user, mission, day)

    topic = unique_topic("gamification")
    group = gamification.build_handlers(module=f"g{uuid.uuid4().hex[:8]}", topic=topic)
    once, other = _completed(user, mission, day), _completed(user, mission, day)
    async with consuming(kafka, [group]), RawProducer(kafka) as producer:
        await producer.send_events(topic.name, [once, once])  # twice in one batch
        await producer.send_event(topic.name, once)  # and again later
        await producer.send_event(topic.name, other)  # the same completion, another event id
        await wait_for_ledger(session_factory, group.specs[0].name, 2)

    assert await _balance(session_factory, user) == (15, 15, 1, 15)
    async with session_factory() as session:
        assigned = await session.scalar(select(UserMission).where(UserMission.user_id == user))
        key = await session.scalar(select(Transaction.idempotency_key).where(Transaction.user_id == user))
    assert assigned is not None
    assert assigned.status is UserMissionStatus.COMPLETED
    assert assigned.completed_at is not None
    assert key == award_key(user, mission.key, day)
    earned = await outbox_for_users(session_factory, [user], "gamification.besitos_earned")
    assert [e.body["payload"]["balance_after"] for e in earned] == [15]
    assert earned[0].event_id == derived_event_id("gamification.besitos_earned", key)
    notices = await outbox_for_users(session_factory, [user], "notification.requested")
    assert len(notices) == 1
    assert "15 besitos" in notices[0].body["payload"]["content"]["text"]


async def test_concurrent_completions_of_two_missions_keep_the_balance_correct(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    day = era().date()
    user = await world.user(last_active_at=None)
    small, big = await world.mission(MissionType.DAILY, 10), await world.mission(MissionType.DAILY, 25)
    for mission in (small, big):
        await _assign(session_factory, user, mission, day)
    async with session_factory() as session, session.begin():  # an earlier, consistent balance
        session.add(Balance(user_id=user, amount=5, total_earned=5))
        session.add(
            Transaction(
                user_id=user,
                amount=5,
                type=TransactionType.EARN,
                source="daily_reward",
                idempotency_key=f"t:{user}",
            )
        )

    # Two consumer groups handle every completion (each sent twice): duplicates and both missions race.
    topic = unique_topic("gamification", partitions=1)
    groups = [gamification.build_handlers(module=f"g{uuid.uuid4().hex[:8]}", topic=topic) for _ in range(2)]
    events = [_completed(user, m, day) for m in (small, big, small, big)]
    async with consuming(kafka, groups), RawProducer(kafka) as producer:
        await producer.send_events(topic.name, events)
        for group in groups:
            await wait_for_ledger(session_factory, group.specs[0].name, len(events))

    assert await _balance(session_factory, user) == (40, 40, 3, 40)
    earned = await outbox_for_users(session_factory, [user], "gamification.besitos_earned")
    assert sorted(e.body["payload"]["amount"] for e in earned) == [10, 25]


async def test_racing_award_transactions_pay_each_mission_once(
    session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    """Ten transactions at once (five per mission) on the real database: the row locks serialise them."""
    day = era().date()
    user = await world.user(last_active_at=None)
    missions = [await world.mission(MissionType.DAILY, 7), await world.mission(MissionType.DAILY, 11)]
    for mission in missions:
        await _assign(session_factory, user, mission, day)
    now = datetime.now(MADRID)

    async def complete(mission: Mission) -> int:
        async with session_factory() as session, session.begin():
            award = await award_mission(
                session, user_id=user, mission_key=mission.key, period_start=day, now=now
            )
            await asyncio.sleep(0.05)  # hold the locks a moment so the others really wait
            return award.amount if award else 0

    paid = await asyncio.gather(*(complete(m) for m in missions * 5))
    assert sorted(p for p in paid if p) == [7, 11]
    assert await _balance(session_factory, user) == (18, 18, 2, 18)


async def test_weekly_leaderboard_posts_the_top_earners_to_the_free_channel(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    slot = era()
    await world.channel(ChannelKind.FREE)
    first = await world.user(last_active_at=None, username="ana")
    second = await world.user(last_active_at=None, username=None)
    third = await world.user(last_active_at=None, username="zoe")
    earnings = [
        (first, 30, TransactionType.EARN, slot - timedelta(days=1)),
        (first, 25, TransactionType.EARN, slot - timedelta(days=6)),
        (second, 40, TransactionType.EARN, slot - timedelta(hours=1)),
        (third, 35, TransactionType.EARN, slot - timedelta(days=3)),
        (third, -20, TransactionType.SPEND, slot - timedelta(days=2)),  # spending does not count
        (second, 100, TransactionType.EARN, slot - timedelta(days=8)),  # last week's
    ]
    async with session_factory() as session, session.begin():
        for user, amount, kind, at in earnings:
            session.add(
                Transaction(
                    user_id=user,
                    amount=amount,
                    type=kind,
                    source="mission",
                    idempotency_key=uuid.uuid4().hex,
                    created_at=at,
                )
            )
        channel = await free_channel(session)

    topic = unique_topic("ticks")
    registry = new_registry()
    gamification.register_jobs(registry, ticks=(topic,))
    run_tick = tick(LEADERBOARD, slot)
    services = replace(SERVICES, gamification=GamificationSettings(leaderboard_size=2))
    async with consuming(kafka, [registry.group], services), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, run_tick)
        run = await wait_for_run(session_factory, run_tick.event_id)

    assert run.status is JobRunStatus.FINISHED, run.error
    assert run.counts == {"leaders": 2, "posts": 1}
    posts = await outbox_caused_by(session_factory, run_tick.event_id, PostScheduled.event_type)
    assert len(posts) == 1
    post = PostScheduled.model_validate(posts[0].body["payload"])
    assert post.channel_chat_id == channel
    assert post.post_id.startswith("leaderboard:")
    assert post.post_type == "announcement"
    text = post.content.text or ""
    assert text.index("@ana — 55 besitos") < text.index(f"Usuario #{second} — 40 besitos")
    assert "zoe" not in text
