"""The domain sections of the settings tree: ``DIANABOT_SUBSCRIPTIONS__``, ``__CONTENT__``, ``__CHANNELS__``
and ``__GAMIFICATION__``. Read with the root ``Settings`` (``dianabot_core/settings.py``) and handed to
the handlers of ``consumers/`` in their services.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, field_validator

from dianabot_core.config import Section
from dianabot_core.domain.gamification import DailyGiftRules


class SubscriptionSettings(Section):
    """``DIANABOT_SUBSCRIPTIONS__...``: reminders, archiving, invite links (``consumers/subscriptions``)."""

    reminder_windows: tuple[timedelta, ...] = Field(
        (timedelta(days=7), timedelta(days=1)),
        description="How long before the end each reminder goes out: a JSON list of ISO 8601 durations "
        "or seconds, e.g. [P7D, P1D] quoted as JSON strings; one reminder per window and cycle, "
        "only the narrowest due window's.",
    )
    archive_after: timedelta = Field(
        timedelta(days=30), description="Archive expired subscriptions this long after they ended (P30D)."
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Rows per page or batch of a job.")
    max_batches: int = Field(
        100, ge=1, description="Pages one job run handles at most; the rest waits for the next run."
    )
    invite_link_ttl: timedelta = Field(
        timedelta(hours=1), description="How long a single-use VIP invite link stays valid (PT1H)."
    )
    renew_url: str = Field(
        "https://t.me/DianaBot?start=renew", description="Where the renew buttons of reminders lead."
    )

    @field_validator("reminder_windows", "invite_link_ttl", "archive_after")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        spans = value if isinstance(value, tuple) else (value,)
        if any(span <= timedelta(0) for span in spans):
            raise ValueError("durations must be positive")
        return value


class ContentSettings(Section):
    """``DIANABOT_CONTENT__...``: publishing scheduled channel posts (``consumers/content.py``)."""

    posts_per_run: int = Field(
        50, ge=1, le=1000, description="Posts one run claims and publishes at most; the rest wait a minute."
    )
    give_up_after: timedelta = Field(
        timedelta(minutes=30),
        description="A post whose sends keep failing transiently is failed this long after its time (PT30M).",
    )


class ChannelSettings(Section):
    """``DIANABOT_CHANNELS__...``: free-channel join requests (``consumers/channels.py``)."""

    join_request_wait: timedelta = Field(
        timedelta(minutes=5),
        description="How long a free-channel join request waits before it is approved (PT5M).",
    )
    approvals_per_run: int = Field(
        50, ge=1, le=1000, description="Requests one approval run claims at most; the rest wait a minute."
    )
    join_request_retention: timedelta = Field(
        timedelta(days=30), description="Decided join requests are deleted this long after (P30D)."
    )
    batch_size: int = Field(1000, ge=1, le=10_000, description="Rows per batch of the cleanup job.")
    max_batches: int = Field(1000, ge=1, description="Batches one cleanup run deletes at most.")


class GamificationSettings(Section):
    """``DIANABOT_GAMIFICATION__...``: missions, leaderboard, daily gift (``consumers/gamification``)."""

    active_within: timedelta = Field(
        timedelta(days=30),
        description="Missions go to users active (last_active_at) within this span before the slot (P30D).",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Users per page of the assignment jobs.")
    max_batches: int = Field(
        1000, ge=1, description="Pages one job run handles at most (expiry batches too); the rest waits."
    )
    leaderboard_size: int = Field(10, ge=1, le=50, description="How many users the weekly leaderboard shows.")
    daily_gift_base: int = Field(10, ge=1, description="Besitos the daily gift pays on every claim.")
    daily_gift_bonuses: dict[int, int] = Field(
        {3: 20, 7: 50, 14: 100, 30: 300},
        description='Extra besitos on the day a streak reaches each length, as JSON: {"3": 20, ...}.',
    )
    daily_gift_cooldown: timedelta = Field(timedelta(hours=24), description="One paid claim per (PT24H).")
    streak_broken_after: timedelta = Field(
        timedelta(hours=48),
        description="A claim later than this after the last one restarts the streak (PT48H).",
    )

    def daily_gift_rules(self) -> DailyGiftRules:
        return DailyGiftRules(
            base=self.daily_gift_base,
            bonuses=dict(self.daily_gift_bonuses),
            cooldown=self.daily_gift_cooldown,
            streak_window=self.streak_broken_after,
        )
