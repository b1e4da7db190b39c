"""The subscription lifecycle rules (dianabot_core.domain.subscriptions) on the real PostgreSQL.

The test database is shared and these functions scan the whole table, so each test lives in its
own random stretch of the distant past (no other test has rows due there) and uses random ids.
Most tests run in one transaction that is rolled back; the ones that need a second connection
commit and delete their users (and so their subscriptions) afterwards.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.ids import derived_event_id
from dianabot_core.domain.subscriptions import (
    archive_expired,
    expire_ended,
    mark_reminder_sent,
    record_kicked,
    reminders_due,
    set_user_free,
    set_user_vip,
    should_kick,
)
from dianabot_core.models import Subscription, SubscriptionPlan, SubscriptionStatus, User, UserState

DAY = timedelta(days=1)


def _era() -> datetime:
    """A random instant between the years 1000 and 1900: this test's own stretch of time."""
    return datetime(1000, 1, 1, tzinfo=UTC) + timedelta(days=random.randint(0, 900 * 365))


def _new_id() -> int:
    return random.randint(10**12, 2**62)


@pytest.fixture
async def session(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction, rolled back after the test: nothing is left in the shared database."""
    async with session_factory() as session:
        try:
            yield session
        finally:
            await session.rollback()


async def _user(session: AsyncSession, state: UserState = UserState.VIP) -> User:
    user = User(id=_new_id(), telegram_id=_new_id(), state=state)
    session.add(user)
    await session.flush()
    return user


async def _subscription(
    session: AsyncSession,
    end_at: datetime | None,
    *,
    user: User | None = None,
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
    now: datetime | None = None,
) -> Subscription:
    """A monthly subscription ending at ``end_at`` (lifetime when None) for a new or given user."""
    user = user or await _user(session)
    start_at = (end_at or now or _era()) - 30 * DAY
    plan = SubscriptionPlan.LIFETIME if end_at is None else SubscriptionPlan.MONTHLY
    sub = Subscription(user_id=user.id, plan=plan, status=status, start_at=start_at, end_at=end_at)
    session.add(sub)
    await session.flush()
    return sub


async def _due(session: AsyncSession, now: datetime, *subs: Subscription) -> dict[int, str]:
    """The reminders due at ``now`` among ``subs``: subscription id -> kind."""
    ids = {s.id for s in subs}
    return {r.subscription_id: r.kind for r in await reminders_due(session, now) if r.subscription_id in ids}


async def _reload(session: AsyncSession, sub: Subscription) -> Subscription:
    await session.refresh(sub)
    return sub


# --- reminders -----------------------------------------------------------------------------------


async def test_reminders_fall_due_at_the_seven_and_one_day_windows(session: AsyncSession) -> None:
    now = _era()
    in_seven_day_window = await _subscription(session, now + 6 * DAY)
    at_seven_day_edge = await _subscription(session, now + 7 * DAY)
    in_one_day_window = await _subscription(session, now + timedelta(hours=12))
    too_early = await _subscription(session, now + 8 * DAY)
    ended = await _subscription(session, now - timedelta(minutes=1))

    due = await _due(
        session, now, in_seven_day_window, at_seven_day_edge, in_one_day_window, too_early, ended
    )

    assert due == {in_seven_day_window.id: "7d", at_seven_day_edge.id: "7d", in_one_day_window.id: "1d"}


async def test_a_reminder_carries_a_deterministic_event_id(session: AsyncSession) -> None:
    now = _era()
    sub = await _subscription(session, now + 2 * DAY)

    [first] = [r for r in await reminders_due(session, now) if r.subscription_id == sub.id]
    [again] = [r for r in await reminders_due(session, now + DAY / 2) if r.subscription_id == sub.id]

    assert first.event_id == again.event_id
    expected = derived_event_id("subscription.expiring", sub.id, (now + 2 * DAY).isoformat(), "7d")
    assert first.event_id == expected
    payload = first.payload()
    assert (payload.user_id, payload.subscription_id, payload.reminder) == (sub.user_id, sub.id, "7d")


async def test_lifetime_subscriptions_never_get_a_reminder(session: AsyncSession) -> None:
    now = _era()
    lifetime = await _subscription(session, None, now=now)

    assert await _due(session, now, lifetime) == {}
    assert all(r.subscription_id != lifetime.id for r in await reminders_due(session, now, [DAY * 10**5]))


async def test_a_reminder_is_not_due_twice(session: AsyncSession) -> None:
    now = _era()
    end_at = now + 5 * DAY
    sub = await _subscription(session, end_at)
    assert await _due(session, now, sub) == {sub.id: "7d"}

    await mark_reminder_sent(session, sub.id, "7d", end_at)

    assert await _due(session, now, sub) == {}
    assert await _due(session, now + 3 * DAY, sub) == {}
    assert await _due(session, end_at - timedelta(hours=20), sub) == {sub.id: "1d"}
    await mark_reminder_sent(session, sub.id, "1d", end_at)
    assert await _due(session, end_at - timedelta(hours=1), sub) == {}


async def test_only_the_narrowest_window_is_due_after_a_gap(session: AsyncSession) -> None:
    # The job did not run during the whole 7-day window: the user gets the 1-day reminder only.
    now = _era()
    sub = await _subscription(session, now + timedelta(hours=3))

    assert await _due(session, now, sub) == {sub.id: "1d"}


async def test_a_renewed_subscription_gets_the_next_cycles_reminders_not_stale_ones(
    session: AsyncSession,
) -> None:
    now = _era()
    first_end = now + 6 * DAY
    sub = await _subscription(session, first_end)
    [first_cycle] = [r for r in await reminders_due(session, now) if r.subscription_id == sub.id]
    await mark_reminder_sent(session, sub.id, "7d", first_end)

    sub.end_at = second_end = first_end + 30 * DAY  # renewed
    await session.flush()

    assert await _due(session, now + DAY, sub) == {}  # neither the old cycle's 1d nor a repeated 7d
    assert await _due(session, first_end - timedelta(hours=2), sub) == {}
    [next_cycle] = [
        r for r in await reminders_due(session, second_end - 6 * DAY) if r.subscription_id == sub.id
    ]
    assert (next_cycle.kind, next_cycle.end_at) == ("7d", second_end)
    assert next_cycle.event_id != first_cycle.event_id


async def test_reminders_page_by_id(session: AsyncSession) -> None:
    now = _era()
    subs = [await _subscription(session, now + DAY * d) for d in (2, 3, 4)]

    first_page = await reminders_due(session, now, limit=2)
    second_page = await reminders_due(session, now, limit=2, after_id=first_page[-1].subscription_id)

    assert [r.subscription_id for r in first_page + second_page] == [s.id for s in subs]


async def test_custom_windows_name_their_reminders(session: AsyncSession) -> None:
    now = _era()
    sub = await _subscription(session, now + timedelta(days=2, hours=12))

    [due] = [r for r in await reminders_due(session, now, [timedelta(days=3), timedelta(hours=12)])]

    assert (due.subscription_id, due.kind) == (sub.id, "3d")


# --- expiry --------------------------------------------------------------------------------------


async def test_expiry_marks_only_ended_subscriptions(session: AsyncSession) -> None:
    now = _era()
    ended_at = now - timedelta(minutes=5)
    ended = await _subscription(session, ended_at)
    ending_now = await _subscription(session, now)
    still_running = await _subscription(session, now + timedelta(seconds=1))
    lifetime = await _subscription(session, None, now=now)

    expired = await expire_ended(session, now)

    assert [e.subscription_id for e in expired] == [ended.id, ending_now.id]
    assert expired[0].event_id == derived_event_id("subscription.expired", ended.id, ended_at.isoformat())
    assert expired[0].payload().user_id == ended.user_id
    statuses = [(await _reload(session, s)).status for s in (ended, ending_now, still_running, lifetime)]
    assert statuses == ["expired", "expired", "active", "active"]
    assert await expire_ended(session, now) == []


async def test_expiry_skips_a_user_who_renewed(session: AsyncSession) -> None:
    now = _era()
    sub = await _subscription(session, now - timedelta(hours=1))
    sub.end_at = now + 30 * DAY  # the renewal landed before the job ran
    await session.flush()

    assert await expire_ended(session, now) == []
    assert (await _reload(session, sub)).status == SubscriptionStatus.ACTIVE


async def test_expiry_is_bounded(session: AsyncSession) -> None:
    now = _era()
    subs = [await _subscription(session, now - DAY * d) for d in (3, 2, 1)]

    first = await expire_ended(session, now, limit=2)
    second = await expire_ended(session, now, limit=2)

    assert [e.subscription_id for e in first] == [subs[0].id, subs[1].id]  # longest ended first
    assert [e.subscription_id for e in second] == [subs[2].id]


async def test_expiry_skips_a_subscription_locked_by_a_renewal_in_flight(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    now = _era()
    async with session_factory() as setup:
        locked = await _subscription(setup, now - DAY)
        free = await _subscription(setup, now - DAY)
        users = [locked.user_id, free.user_id]
        await setup.commit()
    try:
        async with session_factory() as renewal, session_factory() as job:
            await renewal.execute(select(Subscription).where(Subscription.id == locked.id).with_for_update())

            expired = await expire_ended(job, now)

            assert [e.subscription_id for e in expired] == [free.id]
            await job.rollback()
            await renewal.rollback()
    finally:
        async with session_factory() as cleanup:
            await cleanup.execute(delete(User).where(User.id.in_(users)))
            await cleanup.commit()


# --- removal from the channel and the user's state ------------------------------------------------


async def test_an_expired_subscription_is_kicked_once(session: AsyncSession) -> None:
    now = _era()
    sub = await _subscription(session, now - DAY, status=SubscriptionStatus.EXPIRED)

    assert await should_kick(session, sub.id)
    await record_kicked(session, sub.id, now)
    await record_kicked(session, sub.id, now + DAY)  # a repeat keeps the first time

    assert not await should_kick(session, sub.id)
    assert (await _reload(session, sub)).kicked_from_channel_at == now


async def test_no_kick_for_an_active_subscription_or_a_user_who_subscribed_again(
    session: AsyncSession,
) -> None:
    now = _era()
    active = await _subscription(session, now + DAY)
    old = await _subscription(session, now - DAY, status=SubscriptionStatus.EXPIRED)
    user = await session.get_one(User, old.user_id)
    await _subscription(session, now + 30 * DAY, user=user)

    assert not await should_kick(session, active.id)
    assert not await should_kick(session, old.id)
    assert not await should_kick(session, _new_id())


async def test_a_user_goes_back_to_free_unless_subscribed_again(session: AsyncSession) -> None:
    now = _era()
    lapsed = await _user(session, UserState.VIP)
    renewed = await _user(session, UserState.VIP)
    banned = await _user(session, UserState.BANNED)
    await _subscription(session, now + DAY, user=renewed)

    assert await set_user_free(session, lapsed.id)
    assert not await set_user_free(session, renewed.id)
    assert not await set_user_free(session, banned.id)
    for user in (lapsed, renewed, banned):
        await session.refresh(user)
    assert [lapsed.state, renewed.state, banned.state] == ["free", "vip", "banned"]


async def test_a_free_user_becomes_vip_but_a_banned_one_does_not(session: AsyncSession) -> None:
    free = await _user(session, UserState.FREE)
    banned = await _user(session, UserState.BANNED)

    assert await set_user_vip(session, free.id)
    assert not await set_user_vip(session, free.id)
    assert not await set_user_vip(session, banned.id)
    await session.refresh(free)
    await session.refresh(banned)
    assert (free.state, banned.state) == ("vip", "banned")


# --- archiving -----------------------------------------------------------------------------------


async def test_archiving_is_bounded_and_idempotent(session: AsyncSession) -> None:
    now = _era()
    old = [
        await _subscription(session, now - DAY * d, status=SubscriptionStatus.EXPIRED) for d in (40, 35, 31)
    ]
    recent = await _subscription(session, now - 10 * DAY, status=SubscriptionStatus.EXPIRED)
    active = await _subscription(session, now - 40 * DAY)  # ended but not yet expired by the job

    assert await archive_expired(session, now, limit=2) == 2
    assert await archive_expired(session, now, limit=2) == 1
    assert await archive_expired(session, now, limit=2) == 0
    assert await archive_expired(session, now + DAY, limit=2) == 0  # later runs leave archived rows alone

    archived = [(await _reload(session, s)).archived_at for s in (*old, recent, active)]
    assert archived == [now, now, now, None, None]
    assert await archive_expired(session, now, older_than=5 * DAY) == 1  # configurable
