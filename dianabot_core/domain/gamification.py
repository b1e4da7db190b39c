"""Missions and besitos: periods, assignment, expiry, the exactly-once award, the daily gift and its
streak, the weekly leaderboard.

A mission is assigned once per user and period (the database's unique (user, mission, period_start)
makes reassigning a no-op). An award is one ``Transaction`` whose idempotency key names the user,
mission and period, inserted with the user's balance row locked; only an inserted transaction
changes the balance, so a completion delivered twice, or carried by two events, pays once. The
daily gift pays the same way, keyed by the claim, with the streak row changed in that transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import String, func, literal, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from dianabot_core.models import (
    Balance,
    DailyGiftStreak,
    Mission,
    MissionType,
    Transaction,
    TransactionType,
    User,
    UserMission,
    UserMissionStatus,
    UserState,
)

MISSION_SOURCE = "mission"
DAILY_GIFT_SOURCE = "daily_reward"
STREAK_SOURCE = "streak"


class MissionNotFound(LookupError):
    """The completion names a mission (or an assignment) that does not exist: not retried."""


class UserNotFound(LookupError):
    """The event names a user that does not exist: not retried."""


@dataclass(frozen=True)
class Period:
    """One day or week in the bot's timezone: ``start`` is its local date, ``ends_at`` its end (UTC)."""

    start: date
    ends_at: datetime


def local_day(moment: datetime, tz: tzinfo) -> Period:
    """The local day containing ``moment``; it ends at the next local midnight."""
    day = moment.astimezone(tz).date()
    return Period(day, _midnight(day + timedelta(days=1), tz))


def local_week(moment: datetime, tz: tzinfo) -> Period:
    """The local ISO week (Monday to Sunday) containing ``moment``; it ends at the next Monday 00:00."""
    day = moment.astimezone(tz).date()
    monday = day - timedelta(days=day.weekday())
    return Period(monday, _midnight(monday + timedelta(days=7), tz))


def _midnight(day: date, tz: tzinfo) -> datetime:
    # Local midnight as an aware instant (zoneinfo resolves a DST gap forward).
    return datetime.combine(day, time(0), tzinfo=tz)


def besitos_of(rewards: dict[str, Any]) -> int:
    """The besitos a mission pays (``rewards["besitos"]``), 0 when absent or not a positive integer."""
    value = rewards.get("besitos", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# --- assignment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissionInfo:
    id: int
    key: str
    title: str
    besitos: int


@dataclass(frozen=True)
class Assignment:
    """A user mission just inserted (not one that already existed)."""

    user_id: int
    mission: MissionInfo
    period_start: date


async def active_missions(session: AsyncSession, mission_type: MissionType) -> list[MissionInfo]:
    rows = await session.execute(
        select(Mission.id, Mission.key, Mission.title, Mission.rewards)
        .where(Mission.mission_type == mission_type, Mission.is_active.is_(True))
        .order_by(Mission.id)
    )
    return [MissionInfo(id_, key, title, besitos_of(rewards)) for id_, key, title, rewards in rows]


async def active_user_ids(
    session: AsyncSession, *, active_since: datetime, after_id: int, limit: int
) -> list[int]:
    """One keyset page of users who may get missions: not banned, not blocking the bot, active lately."""
    result = await session.scalars(
        select(User.id)
        .where(
            User.id > after_id,
            User.state != UserState.BANNED,
            User.bot_blocked_at.is_(None),
            User.last_active_at >= active_since,
        )
        .order_by(User.id)
        .limit(limit)
    )
    return list(result)


async def assign_missions(
    session: AsyncSession,
    user_ids: Sequence[int],
    missions: Sequence[MissionInfo],
    period: Period,
    now: datetime,
) -> list[Assignment]:
    """Insert every (user, mission) of the period in one statement; returns only the new rows."""
    if not user_ids or not missions:
        return []
    by_id = {m.id: m for m in missions}
    pairs = (
        select(
            User.id,
            Mission.id,
            literal(UserMissionStatus.ACTIVE.value, String),
            literal(period.start),
            literal(now),
            literal(period.ends_at),
        )
        .select_from(User)
        .join(Mission, true())  # every user of the page times every mission
        .where(User.id.in_(user_ids), Mission.id.in_(list(by_id)))
    )
    statement = (
        pg_insert(UserMission)
        .from_select(["user_id", "mission_id", "status", "period_start", "assigned_at", "expires_at"], pairs)
        .on_conflict_do_nothing(constraint="uq_user_missions_user_mission_period")
        .returning(UserMission.user_id, UserMission.mission_id)
    )
    rows = (await session.execute(statement)).all()
    new = [Assignment(user_id, by_id[mission_id], period.start) for user_id, mission_id in rows]
    return sorted(new, key=lambda a: (a.user_id, a.mission.id))


async def expire_unfinished(
    session: AsyncSession, mission_type: MissionType, now: datetime, limit: int
) -> int:
    """Mark one bounded batch of active missions of this type whose period ended ``expired``."""
    due = (
        select(UserMission.id)
        .join(Mission, Mission.id == UserMission.mission_id)
        .where(
            UserMission.status == UserMissionStatus.ACTIVE,
            UserMission.expires_at <= now,
            Mission.mission_type == mission_type,
        )
        .limit(limit)
        .with_for_update(of=UserMission, skip_locked=True)
    )
    result = await session.execute(
        update(UserMission)
        .where(UserMission.id.in_(due))
        .values(status=UserMissionStatus.EXPIRED)
        .returning(UserMission.id)
    )
    return len(result.all())


# --- the award -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Award:
    """Besitos just paid for a completed mission."""

    user_id: int
    mission_title: str
    amount: int
    balance_after: int
    idempotency_key: str


def award_key(user_id: int, mission_key: str, period_start: date) -> str:
    return f"mission:{user_id}:{mission_key}:{period_start.isoformat()}"


async def award_mission(
    session: AsyncSession, *, user_id: int, mission_key: str, period_start: date, now: datetime
) -> Award | None:
    """Pay a completed mission's besitos once and mark it completed; None when nothing is paid now.

    Locks, in this order, the user mission and the balance row (created at 0 if missing), so
    completions for one user serialise on the balance and a concurrent expiry waits or is waited
    for. Nothing is paid for an expired mission or a mission without besitos.
    """
    mission = await session.scalar(select(Mission).where(Mission.key == mission_key))
    if mission is None:
        raise MissionNotFound(f"mission {mission_key!r} not found")
    assigned = await session.scalar(
        select(UserMission)
        .where(
            UserMission.user_id == user_id,
            UserMission.mission_id == mission.id,
            UserMission.period_start == period_start,
        )
        .with_for_update()
    )
    if assigned is None:
        raise MissionNotFound(
            f"mission {mission_key!r} was not assigned to user {user_id} for {period_start}"
        )
    if assigned.status == UserMissionStatus.EXPIRED:
        return None
    award = await _pay(
        session,
        user_id,
        besitos_of(mission.rewards),
        award_key(user_id, mission_key, period_start),
        mission.title,
    )
    if assigned.status == UserMissionStatus.ACTIVE:
        assigned.status = UserMissionStatus.COMPLETED
        assigned.completed_at = now
    return award


async def _pay(session: AsyncSession, user_id: int, amount: int, key: str, title: str) -> Award | None:
    balance_after = await earn(
        session, user_id, amount, key=key, source=MISSION_SOURCE, description=f"Mission: {title}"
    )
    return None if balance_after is None else Award(user_id, title, amount, balance_after, key)


async def lock_balance(session: AsyncSession, user_id: int) -> None:
    """Lock the user's balance row (created at 0 if missing) until the transaction ends."""
    await session.execute(pg_insert(Balance).values(user_id=user_id).on_conflict_do_nothing())
    await session.execute(select(Balance.user_id).where(Balance.user_id == user_id).with_for_update())


async def earn(
    session: AsyncSession, user_id: int, amount: int, *, key: str, source: str, description: str
) -> int | None:
    """Credit ``amount`` once per ``key`` with the balance row locked; the balance after, or None
    when nothing was credited (a non-positive amount, or the key was paid already)."""
    if amount <= 0:
        return None
    await lock_balance(session, user_id)
    inserted = await session.scalar(
        pg_insert(Transaction)
        .values(
            user_id=user_id,
            amount=amount,
            type=TransactionType.EARN,
            source=source,
            description=description[:500],
            idempotency_key=key,
        )
        .on_conflict_do_nothing(index_elements=[Transaction.idempotency_key])
        .returning(Transaction.id)
    )
    if inserted is None:
        return None
    balance_after = await session.scalar(
        update(Balance)
        .where(Balance.user_id == user_id)
        .values(amount=Balance.amount + amount, total_earned=Balance.total_earned + amount)
        .returning(Balance.amount)
    )
    return int(balance_after or 0)


# --- the daily gift and its streak ---------------------------------------------------------------


@dataclass(frozen=True)
class DailyGiftRules:
    """What the daily gift pays and when: one claim per ``cooldown``; a claim within
    ``streak_window`` of the previous one extends the streak, a later one starts it again."""

    base: int = 10
    bonuses: Mapping[int, int] = field(default_factory=lambda: {3: 20, 7: 50, 14: 100, 30: 300})
    cooldown: timedelta = timedelta(hours=24)
    streak_window: timedelta = timedelta(hours=48)


def next_streak(
    streak_days: int, last_claimed_at: datetime | None, claimed_at: datetime, rules: DailyGiftRules
) -> int | None:
    """The streak after a claim at ``claimed_at``; None when the claim comes within the cooldown of
    the last one (or before it: a late duplicate), which pays nothing."""
    if last_claimed_at is not None and claimed_at < last_claimed_at + rules.cooldown:
        return None
    if last_claimed_at is None or streak_days == 0 or claimed_at - last_claimed_at > rules.streak_window:
        return 1
    return streak_days + 1


@dataclass(frozen=True)
class Payment:
    """Besitos just credited: the amount, its transaction's key and source, the balance after."""

    amount: int
    idempotency_key: str
    source: str
    balance_after: int


@dataclass(frozen=True)
class DailyGift:
    """A claim that paid: the streak it made and the payments (the base reward, a milestone bonus)."""

    user_id: int
    streak_days: int
    payments: tuple[Payment, ...]

    @property
    def amount(self) -> int:
        return sum(p.amount for p in self.payments)


def daily_gift_key(user_id: int, claimed_at: datetime, source: str = DAILY_GIFT_SOURCE) -> str:
    return f"{source}:{user_id}:{claimed_at.astimezone(UTC).isoformat()}"


async def claim_daily_gift(
    session: AsyncSession, *, user_id: int, claimed_at: datetime, rules: DailyGiftRules
) -> DailyGift | None:
    """Pay the daily gift for a claim at ``claimed_at`` once and move the streak; None when the
    claim is within the cooldown (a second press, or the same claim delivered again).

    The balance row is locked first (as every besitos change does), so claims of one user
    serialise; then the streak row, which the streak reset job only ever takes with SKIP LOCKED.
    """
    if await session.get(User, user_id) is None:
        raise UserNotFound(f"user {user_id} not found")
    await lock_balance(session, user_id)
    streak = await session.get(DailyGiftStreak, user_id, with_for_update=True, populate_existing=True)
    days = next_streak(
        streak.streak_days if streak else 0, streak.last_claimed_at if streak else None, claimed_at, rules
    )
    if days is None:
        return None
    if streak is None:
        session.add(DailyGiftStreak(user_id=user_id, streak_days=days, last_claimed_at=claimed_at))
    else:
        streak.streak_days, streak.last_claimed_at = days, claimed_at
    amounts = (
        (DAILY_GIFT_SOURCE, rules.base, "Daily gift"),
        (STREAK_SOURCE, rules.bonuses.get(days, 0), f"Streak of {days} days"),
    )
    payments = []
    for source, amount, description in amounts:
        key = daily_gift_key(user_id, claimed_at, source)
        balance_after = await earn(session, user_id, amount, key=key, source=source, description=description)
        if balance_after is not None:
            payments.append(Payment(amount, key, source, balance_after))
    return DailyGift(user_id, days, tuple(payments))


# --- weekly leaderboard --------------------------------------------------------------------------


@dataclass(frozen=True)
class Leader:
    user_id: int
    username: str | None
    earned: int


async def top_earners(session: AsyncSession, *, since: datetime, until: datetime, limit: int) -> list[Leader]:
    """The users who earned most besitos (sum of ``earn`` transactions) in [since, until); banned excluded."""
    earned = func.sum(Transaction.amount)
    rows = await session.execute(
        select(Transaction.user_id, User.username, earned)
        .join(User, User.id == Transaction.user_id)
        .where(
            Transaction.type == TransactionType.EARN,
            Transaction.created_at >= since,
            Transaction.created_at < until,
            User.state != UserState.BANNED,
        )
        .group_by(Transaction.user_id, User.username)
        .having(earned > 0)
        .order_by(earned.desc(), Transaction.user_id)
        .limit(limit)
    )
    return [Leader(user_id, username, int(total)) for user_id, username, total in rows]


_MEDALS = ("🥇", "🥈", "🥉")


def leaderboard_text(leaders: Sequence[Leader], week_start: date) -> str:
    """The channel post: a ranked table of names and besitos earned in the week."""
    lines = [f"🏆 Top besitos de la semana del {week_start.strftime('%d/%m/%Y')}", ""]
    for rank, leader in enumerate(leaders, start=1):
        mark = _MEDALS[rank - 1] if rank <= len(_MEDALS) else f"{rank}."
        name = f"@{leader.username}" if leader.username else f"Usuario #{leader.user_id}"
        lines.append(f"{mark} {name} — {leader.earned} besitos")
    return "\n".join(lines)


def week_label(week_start: date) -> str:
    """An ISO week label, e.g. ``2025-W07``: the leaderboard post's id is derived from it."""
    year, week, _ = week_start.isocalendar()
    return f"{year}-W{week:02d}"


# --- streak reset --------------------------------------------------------------------------------


async def reset_broken_streaks(session: AsyncSession, now: datetime, *, window: timedelta, limit: int) -> int:
    """Set to 0 one bounded batch of running streaks whose last claim is more than ``window`` before
    ``now``; call until it returns fewer than ``limit``. Rows a claim holds are skipped: that claim
    decides the streak itself (with the same rule)."""
    broken = (
        select(DailyGiftStreak.user_id)
        .where(DailyGiftStreak.streak_days > 0, DailyGiftStreak.last_claimed_at < now - window)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        update(DailyGiftStreak)
        .where(DailyGiftStreak.user_id.in_(broken.scalar_subquery()))
        .values(streak_days=0)
        .returning(DailyGiftStreak.user_id)
    )
    return len(result.all())
