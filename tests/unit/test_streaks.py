"""The daily gift's rules: the 24 h cooldown, the 48 h streak window, the milestone bonuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dianabot_core.domain.gamification import DailyGiftRules, daily_gift_key, next_streak
from dianabot_core.domain.settings import GamificationSettings

RULES = DailyGiftRules()
T0 = datetime(2026, 3, 4, 21, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_a_first_claim_starts_a_streak_of_one() -> None:
    assert next_streak(0, None, T0, RULES) == 1


@pytest.mark.parametrize("later", [0 * H, 1 * H, 23 * H + timedelta(minutes=59), -5 * H])
def test_a_claim_within_the_cooldown_or_before_the_last_pays_nothing(later: timedelta) -> None:
    assert next_streak(4, T0, T0 + later, RULES) is None


@pytest.mark.parametrize("later", [24 * H, 30 * H, 48 * H])
def test_a_claim_between_24_and_48_hours_later_extends_the_streak(later: timedelta) -> None:
    assert next_streak(4, T0, T0 + later, RULES) == 5


def test_a_claim_more_than_48_hours_later_starts_again() -> None:
    assert next_streak(4, T0, T0 + 48 * H + timedelta(seconds=1), RULES) == 1


def test_a_streak_the_reset_job_broke_starts_again_even_inside_the_window() -> None:
    assert next_streak(0, T0, T0 + 30 * H, RULES) == 1


def test_bonuses_fall_on_the_milestone_days_only() -> None:
    paid = {day: RULES.bonuses.get(day, 0) for day in range(1, 32)}
    assert {day for day, bonus in paid.items() if bonus} == {3, 7, 14, 30}
    assert RULES.base > 0


def test_settings_make_the_rules_and_the_keys_name_the_claim_instant() -> None:
    settings = GamificationSettings(daily_gift_base=5, daily_gift_bonuses={2: 7}, streak_broken_after=36 * H)
    rules = settings.daily_gift_rules()
    assert (rules.base, dict(rules.bonuses), rules.cooldown, rules.streak_window) == (
        5,
        {2: 7},
        24 * H,
        36 * H,
    )
    assert next_streak(1, T0, T0 + 40 * H, rules) == 1
    local = T0.astimezone(datetime.now().astimezone().tzinfo)
    assert daily_gift_key(7, T0) == daily_gift_key(7, local) == "daily_reward:7:2026-03-04T21:00:00+00:00"
    assert daily_gift_key(7, T0, "streak") != daily_gift_key(7, T0)
