"""Periods, rewards and texts of missions and the leaderboard (no services)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from consumers.gamification import assignment_text
from dianabot_core.domain.gamification import (
    Assignment,
    Leader,
    MissionInfo,
    award_key,
    besitos_of,
    leaderboard_text,
    local_day,
    local_week,
    week_label,
)

MADRID = ZoneInfo("Europe/Madrid")


def test_the_local_day_follows_the_bots_timezone_and_ends_at_local_midnight() -> None:
    # 23:30 UTC on 31 March is already 1 April in Madrid (CEST, UTC+2).
    day = local_day(datetime(2025, 3, 31, 23, 30, tzinfo=UTC), MADRID)
    assert day.start == date(2025, 4, 1)
    assert day.ends_at == datetime(2025, 4, 1, 22, 0, tzinfo=UTC)


def test_a_day_with_the_spring_forward_gap_is_23_hours_long() -> None:
    day = local_day(datetime(2025, 3, 30, 8, 0, tzinfo=UTC), MADRID)
    assert day.start == date(2025, 3, 30)
    assert day.ends_at == datetime(2025, 3, 30, 22, 0, tzinfo=UTC)


def test_the_local_week_starts_on_monday() -> None:
    week = local_week(datetime(2025, 2, 16, 19, 0, tzinfo=UTC), MADRID)  # Sunday evening
    assert week.start == date(2025, 2, 10)
    assert week.ends_at == datetime(2025, 2, 16, 23, 0, tzinfo=UTC)
    assert week_label(week.start) == "2025-W07"


@pytest.mark.parametrize(
    ("rewards", "besitos"),
    [({"besitos": 10}, 10), ({}, 0), ({"besitos": -3}, 0), ({"besitos": "10"}, 0), ({"besitos": True}, 0)],
)
def test_only_a_positive_integer_reward_pays(rewards: dict[str, object], besitos: int) -> None:
    assert besitos_of(rewards) == besitos


def test_the_award_key_names_user_mission_and_period() -> None:
    assert award_key(7, "daily_react", date(2025, 1, 2)) == "mission:7:daily_react:2025-01-02"


def test_the_leaderboard_ranks_with_medals_and_names_users_without_username_by_id() -> None:
    leaders = [Leader(1, "ana", 55), Leader(2, None, 40), Leader(3, "zoe", 35), Leader(4, "leo", 1)]
    text = leaderboard_text(leaders, date(2025, 2, 10))
    assert text.splitlines() == [
        "🏆 Top besitos de la semana del 10/02/2025",
        "",
        "🥇 @ana — 55 besitos",
        "🥈 Usuario #2 — 40 besitos",
        "🥉 @zoe — 35 besitos",
        "4. @leo — 1 besitos",
    ]


def test_the_prompt_is_in_english_only_for_english_speakers() -> None:
    assignment = Assignment(1, MissionInfo(1, "k", "React 3 times", 10), date(2025, 1, 1))
    assert assignment_text(assignment, "en-GB") == "🎯 New mission: React 3 times. Reward: 10 besitos."
    assert assignment_text(assignment, None) == "🎯 Nueva misión: React 3 times. Recompensa: 10 besitos."
