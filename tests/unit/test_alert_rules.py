"""The Prometheus alert rules (deploy/prometheus/), checked and unit-tested by promtool.

promtool comes from Debian's ``prometheus`` package: ``devstack/promtool.sh`` installs it, and
``make test`` / ``make unit`` run that first. Without it these tests fail, they never skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.observability_support import RULE_TESTS, RULES, promtool


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_the_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(load(RULES)))} rules found" in result.stdout


def test_the_prometheus_config_loads_the_rules() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_asked_for_exist() -> None:
    names = set(alerts(load(RULES)))
    assert {
        "DianabotConsumerLagHigh",  # consumer lag
        "DianabotDeadLettersGrowing",  # dead-letter growth
        "DianabotHeartbeatStale",  # the heartbeat job stopped
        "DianabotSchedulerNotTicking",  # the scheduler stopped emitting jobs
        "DianabotSchedulerLeaderCount",  # leaders != 1
        "DianabotGcPausesLong",  # GC pauses
        "DianabotTelegramSendFailures",  # Telegram send failures
    } <= names
    for name, rule in alerts(load(RULES)).items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    cases = [case for test in load(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    for name in alerts(load(RULES)):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"no test where {name} fires"
        assert any(not case.get("exp_alerts") for case in mine), f"no test where {name} stays quiet"


@pytest.mark.parametrize("name", sorted(alerts(load(RULES))))
def test_an_alert_that_never_fires_fails_the_unit_tests(name: str, tmp_path: Path) -> None:
    """The unit tests depend on each rule: with its expression emptied, promtool test rules fails."""
    rules = load(RULES)
    alerts(rules)[name]["expr"] = "vector(1) == 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)

    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)

    assert result.returncode != 0
    assert f"alertname: {name}," in result.stdout + result.stderr


def test_a_wrong_leader_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """Two leaders at once must alert, not only none: `> 1` instead of `!= 1` is caught."""
    text = RULES.read_text()
    assert text.count("sum(dianabot_scheduler_is_leader) != 1") == 1
    (tmp_path / RULES.name).write_text(
        text.replace("sum(dianabot_scheduler_is_leader) != 1", "sum(dianabot_scheduler_is_leader) > 1")
    )
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)

    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)

    assert result.returncode != 0
    assert "alertname: DianabotSchedulerLeaderCount, time: 5m" in result.stdout + result.stderr


def test_without_promtool_the_tests_fail_and_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"devstack/promtool\.sh"):
        promtool("--version")
