"""The Grafana dashboard (deploy/grafana/dianabot-jobs.json): valid PromQL, a sane layout, portable.

Its queries are parsed by promtool (each one as a recording rule, Grafana's variables replaced by
values), so a typo fails here instead of as an empty panel; which metrics they name is
tests/unit/test_metric_names.py's concern.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.unit.observability_support import dashboard_expressions, promtool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD: dict[str, Any] = json.loads((ROOT / "deploy" / "grafana" / "dianabot-jobs.json").read_text())
# Grafana's variables as Prometheus would see them once Grafana has replaced them.
VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "instance": ".*"}


def graph_panels() -> list[dict[str, Any]]:
    return [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]


def grafana_to_promql(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in VARIABLES, f"unknown Grafana variable ${name} in {expr!r}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{number}", "expr": grafana_to_promql(expr)}
        for number, (_, expr) in enumerate(dashboard_expressions())
    ]
    assert len(rules) >= 20
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = promtool("check", "rules", path.name, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_broken_query_would_be_caught(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert promtool("check", "rules", path.name, cwd=tmp_path).returncode != 0


def test_the_dashboard_is_portable_and_its_panels_do_not_overlap() -> None:
    assert DASHBOARD["uid"] == "dianabot-jobs"
    assert "id" not in DASHBOARD  # a provisioned or imported dashboard gets its id from Grafana
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in graph_panels():
        # Any Prometheus the user picks, not one data source uid of one Grafana.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_the_dashboard_shows_what_the_alerts_watch() -> None:
    queried = " ".join(expr for _, expr in dashboard_expressions())
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    # The rules' expressions only: their descriptions name commands (`python -m dianabot_core.cli`).
    expressions = " ".join(str(rule["expr"]) for group in groups for rule in group["rules"])
    watched = set(re.findall(r"dianabot_[a-z_]+", expressions))
    assert watched
    missing = sorted(name for name in watched if name not in queried)
    assert not missing, f"alerted on but not on the dashboard: {missing}"
