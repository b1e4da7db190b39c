"""The handlers' ``Services``: built once from the settings tree, typed, frozen, no string keys."""

from __future__ import annotations

import dataclasses
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from consumers.services import MissingService, Retention, Services
from dianabot_core.domain.settings import GamificationSettings
from tests.conftest import make_settings


def test_services_take_the_trees_sections_and_timezone() -> None:
    settings = make_settings(timezone="America/Mexico_City", gamification=GamificationSettings(batch_size=7))
    services = Services.from_settings(settings)
    assert services.timezone == ZoneInfo("America/Mexico_City")
    assert services.gamification.batch_size == 7
    assert services.subscriptions is settings.subscriptions
    assert services.content is settings.content
    assert services.channels is settings.channels
    assert services.retention == Retention()


def test_defaults_need_no_settings_and_are_frozen() -> None:
    services = Services()
    assert services.timezone is UTC
    assert services.gamification == GamificationSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        services.timezone = ZoneInfo("Europe/Madrid")  # type: ignore[misc]


def test_a_missing_adapter_is_a_wiring_error_not_a_permanent_failure() -> None:
    services = Services()
    with pytest.raises(MissingService, match="TelegramSender"):
        _ = services.sender
    with pytest.raises(MissingService, match="Monitoring"):
        _ = services.monitoring
