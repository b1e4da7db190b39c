"""Every metric the alert rules and the Grafana dashboard query is one the service really exposes.

The names come from the prometheus_client registry after importing both composition roots (every
metric the consumers and the scheduler register, and the client's process and platform metrics),
expanded as the exposition writes them: a counter ``x`` is ``x_total``, a histogram ``x`` is
``x_bucket``, ``x_count`` and ``x_sum``. Names Prometheus adds itself (``up``) are allowed by name.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.observability_support import (
    dashboard_expressions,
    exposed_names,
    metric_names,
    rule_expressions,
)

FROM_PROMETHEUS = frozenset({"up"})  # series Prometheus writes for every target


def test_names_are_read_from_promql_as_prometheus_would() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(dianabot_gc_pause_seconds_bucket{le!="+Inf",'
        ' instance=~"$instance"}[$__rate_interval] offset 5m))) > 0.25 and on (job) up == 1'
        " or absent(dianabot_scheduler_is_leader) - 1 unless time() - x:recorded:rate5m > 1e3"
    )
    assert metric_names(expr) == {
        "dianabot_gc_pause_seconds_bucket",
        "up",
        "dianabot_scheduler_is_leader",
        "x:recorded:rate5m",
    }


def test_exposed_names_follow_the_exposition_suffixes() -> None:
    names = exposed_names()
    assert {
        "dianabot_events_total",
        "dianabot_handler_seconds_bucket",
        "dianabot_handler_seconds_sum",
    } <= names
    assert {
        "dianabot_consumer_lag_records",
        "dianabot_scheduler_is_leader",
        "dianabot_telegram_requests_total",
    } <= names
    assert "process_resident_memory_bytes" in names
    assert "dianabot_events" not in names  # a counter is queried with its _total suffix
    assert "dianabot_handler_seconds" not in names


@pytest.mark.parametrize(
    ("source", "expressions"), [("alert rules", rule_expressions), ("dashboard", dashboard_expressions)]
)
def test_every_queried_metric_is_exposed_by_the_service(source: str, expressions: Any) -> None:
    exposed = exposed_names() | FROM_PROMETHEUS
    used: set[str] = set()
    for where, expr in expressions():
        names = metric_names(expr)
        assert names, f"{source}, {where}: no metric in {expr!r}"
        unknown = sorted(names - exposed)
        assert not unknown, f"{source}, {where}: {unknown} are not exposed by the service"
        used |= names
    assert len({name for name in used if name.startswith("dianabot_")}) >= 10


def test_a_misspelt_metric_would_be_caught() -> None:
    exposed = exposed_names()
    typos = (
        "rate(dianabot_events[5m])",
        "dianabot_handler_seconds",
        "dianabot_consumer_lag_total",
        "dianabot_consumer_lag",  # the name before it carried its unit
    )
    for typo in typos:
        assert metric_names(typo) - exposed, typo
