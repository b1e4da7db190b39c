"""Shared by the observability tests: promtool, and the PromQL of the alert rules and the dashboard."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dianabot-jobs.json"
# Importing them imports every module that registers metrics or defines settings.
COMPOSITION_ROOTS = ("consumers.app", "schedulers.app")


def promtool(*args: str | Path, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail (never skip) when it is missing, saying how to get it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run devstack/promtool.sh (Debian's prometheus package; "
            "`make test` does it for you)",
            pytrace=False,
        )
    return subprocess.run(
        [path, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NAME = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a name not followed by "(" outside braces and ranges)."""
    text = _STRING.sub('""', expr)
    for pattern in (_MATCHERS, _RANGE, _GRAFANA_VARIABLE, _GROUPING, _OFFSET):
        text = pattern.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exposed_names() -> set[str]:
    """What a scrape of the consumers or the scheduler can hold, by the registry's metric types."""
    for module in COMPOSITION_ROOTS:
        importlib.import_module(module)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def rule_expressions() -> Iterator[tuple[str, str]]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"{panel['title']} / {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert selector is not None, (
                f"variable {variable['name']}: expected label_values(selector, label)"
            )
            yield f"variable {variable['name']}", selector[1]
