"""Policies that need no services: the ledger's verdicts, the chat intervals, the sender's settings.

The slot rules themselves run in PostgreSQL (``telegram_reserve_slot``): see
``tests/integration/test_telegram_limits.py``.
"""

from __future__ import annotations

import pytest

from dianabot_core.settings import load_section
from dianabot_core.telegram.ledger import Verdict, verdict
from dianabot_core.telegram.limits import chat_interval
from dianabot_core.telegram.models import SendStatus
from dianabot_core.telegram.settings import SenderSettings


def test_chat_intervals_by_kind() -> None:
    settings = SenderSettings()
    assert chat_interval(1001, settings) == settings.private_chat_interval_s >= 1.0
    assert chat_interval(-1001234567890, settings) == settings.group_interval_s >= 3.0  # 20/min


@pytest.mark.parametrize(
    ("status", "age_s", "resend", "expected"),
    [
        (SendStatus.NEW, None, False, Verdict.SEND),
        (SendStatus.RETRY, 5.0, False, Verdict.SEND),
        (SendStatus.FAILED, 5.0, False, Verdict.SEND),  # only an operator's replay gets here
        (SendStatus.SENT, 5.0, True, Verdict.SKIP),
        (SendStatus.BLOCKED, 5.0, True, Verdict.SKIP),
        (SendStatus.PENDING, 1.0, True, Verdict.IN_FLIGHT),
        (SendStatus.PENDING, 60.0, False, Verdict.SKIP),
        (SendStatus.PENDING, 60.0, True, Verdict.SEND),
        (SendStatus.UNKNOWN, 60.0, False, Verdict.SKIP),
        (SendStatus.UNKNOWN, 60.0, True, Verdict.SEND),
    ],
)
def test_ledger_verdicts(status: SendStatus, age_s: float | None, resend: bool, expected: Verdict) -> None:
    assert verdict(status, age_s, resend_if_unknown=resend, lease_s=30) is expected


def test_sender_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIANABOT_SENDER__GLOBAL_RATE_PER_S", "20")
    monkeypatch.setenv("DIANABOT_SENDER__BROADCAST_RESEND_IF_UNKNOWN", "true")
    settings = load_section(SenderSettings)
    assert settings.global_interval_s == pytest.approx(0.05)
    assert settings.broadcast_resend_if_unknown is True


def test_sender_settings_refuse_a_chat_interval_faster_than_telegram_allows() -> None:
    with pytest.raises(ValueError, match="private_chat_interval_s"):
        SenderSettings(private_chat_interval_s=0.5)
