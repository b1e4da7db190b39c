"""Reminder labels and the deterministic event ids of reminders and expiries, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dianabot_contracts.ids import derived_event_id
from dianabot_core.domain.subscriptions import ExpiredSubscription, ReminderDue, reminder_kind

END_AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "kind"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(days=1), "1d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=45), "45s"),
    ],
)
def test_a_window_is_named_in_its_largest_whole_unit(window: timedelta, kind: str) -> None:
    assert reminder_kind(window) == kind


@pytest.mark.parametrize("window", [timedelta(0), timedelta(days=-1)])
def test_a_window_must_be_positive(window: timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        reminder_kind(window)


def test_a_reminders_event_id_is_one_per_subscription_cycle_and_kind() -> None:
    reminder = ReminderDue(subscription_id=7, user_id=3, end_at=END_AT, kind="7d")
    same_instant = END_AT.astimezone(timezone(timedelta(hours=2)))

    assert reminder.event_id == derived_event_id("subscription.expiring", 7, END_AT.isoformat(), "7d")
    assert ReminderDue(7, 3, same_instant, "7d").event_id == reminder.event_id
    assert ReminderDue(7, 3, END_AT, "1d").event_id != reminder.event_id
    assert ReminderDue(7, 3, END_AT + timedelta(days=30), "7d").event_id != reminder.event_id


def test_a_reminder_becomes_a_subscription_expiring_payload() -> None:
    payload = ReminderDue(subscription_id=7, user_id=3, end_at=END_AT, kind="1d").payload()

    assert (payload.user_id, payload.subscription_id, payload.end_at, payload.reminder) == (
        3,
        7,
        END_AT,
        "1d",
    )
    assert payload.aggregate_key() == "user:3"


def test_an_expirys_event_id_is_one_per_subscription_cycle() -> None:
    expired = ExpiredSubscription(subscription_id=7, user_id=3, end_at=END_AT)

    assert expired.event_id == derived_event_id("subscription.expired", 7, END_AT.isoformat())
    assert ExpiredSubscription(7, 3, END_AT + timedelta(days=30)).event_id != expired.event_id
    assert expired.payload().end_at == END_AT
