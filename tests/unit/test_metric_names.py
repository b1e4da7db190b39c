"""Every metric the alert rules and the Grafana dashboard query is one the service really exposes.

The names come from the prometheus_client registry after importing both composition roots (every
metric the consumers and the scheduler register, and the client's process and platform metrics),
expanded as the exposition writes them: a counter ``x`` is ``x_total``, a histogram ``x`` is
``x_bucket``, ``x_count`` and ``x_sum``. Names Prometheus adds itself (``up``) are allowed by name.

Every ``dianabot_*`` metric is also named as Prometheus recommends: a counter with ``_total`` (as
declared in the source, not only as the client exposes it), any other metric with its unit.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from tests.unit.observability_support import (
    ROOT,
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


# --- Prometheus naming: a counter ends in _total, any other metric in its unit -------------------------

# The base units Prometheus names (seconds, bytes; ratio for 0-1 fractions) and, for a gauge or a
# histogram that counts things, the things it counts. A new word here is a decision, not a fix-up.
UNITS = frozenset({"seconds", "bytes", "ratio", "records", "messages", "incidents", "recipients"})
# Metrics with no unit at all, each with its reason.
UNITLESS = {
    # A 0/1 state (this replica holds the lock), as unitless as Prometheus' own `up`.
    "dianabot_scheduler_is_leader",
}
# What the exposition appends to a family's name: a name ending in one reads as the wrong type.
RESERVED_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket", "_info")
SOURCE_PACKAGES = ("dianabot_core", "consumers", "schedulers", "dianabot_cli", "bench", "devstack")


def naming_problems(families: Iterable[Metric]) -> list[str]:
    """What is wrong with each dianabot_* family's name (empty when every one is right)."""
    problems = []
    for family in families:
        name, kind = family.name, family.type
        if not name.startswith("dianabot_"):
            continue
        if kind == "counter":
            # The client strips a declared _total and writes it back on every sample.
            if name.endswith(RESERVED_SUFFIXES):
                problems.append(f"counter {name}_total: ends in {name.rsplit('_', 1)[1]} before _total")
            if any(not s.name.endswith(("_total", "_created")) for s in family.samples):
                problems.append(f"counter {name}: a sample without _total")
            continue
        if name.endswith(RESERVED_SUFFIXES):
            problems.append(f"{kind} {name}: ends in a suffix that marks another type's series")
        elif name not in UNITLESS and name.rsplit("_", 1)[1] not in UNITS:
            problems.append(f"{kind} {name}: no unit suffix ({', '.join(sorted(UNITS))})")
    return problems


def test_every_dianabot_metric_is_named_with_its_unit_and_counters_with_total() -> None:
    exposed_names()  # imports the composition roots: every module that registers a metric
    families = [f for f in REGISTRY.collect() if f.name.startswith("dianabot_")]
    assert len(families) >= 26
    assert naming_problems(families) == []
    assert {f.name for f in families} >= UNITLESS, "an allowed exception names no metric any more"


def test_the_naming_rule_catches_a_name_without_its_unit() -> None:
    registry = CollectorRegistry()
    Gauge("dianabot_consumer_lag", "the name before it carried its unit", registry=registry)
    Gauge("dianabot_queue_depth_records", "a count of things", registry=registry)
    Gauge("dianabot_retries_total", "a gauge that reads as a counter", registry=registry)
    Histogram("dianabot_handler_time", "no unit", registry=registry)
    Histogram("dianabot_batch_bytes", "a base unit", registry=registry)
    Counter("dianabot_events", "the client writes _total", registry=registry)
    Gauge("process_open_fds", "not ours", registry=registry)
    assert naming_problems(registry.collect()) == [
        "gauge dianabot_consumer_lag: no unit suffix "
        "(bytes, incidents, messages, ratio, recipients, records, seconds)",
        "gauge dianabot_retries_total: ends in a suffix that marks another type's series",
        "histogram dianabot_handler_time: no unit suffix "
        "(bytes, incidents, messages, ratio, recipients, records, seconds)",
    ]


def _declared_counters(path: Path) -> Iterator[tuple[int, str]]:
    """Line and name of each prometheus_client Counter a module declares with a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client"
        for alias in node.names
        if alias.name == "Counter"
    }
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in aliases):
            continue
        named = [k.value for k in node.keywords if k.arg == "name"] + node.args[:1]
        if named and isinstance(named[0], ast.Constant) and isinstance(named[0].value, str):
            yield node.lineno, named[0].value


def test_every_counter_is_declared_with_total_as_it_is_exposed() -> None:
    """The client appends _total whatever the declaration says: the source names what a query uses."""
    declared = {
        f"{path.relative_to(ROOT)}:{line}": name
        for package in SOURCE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _declared_counters(path)
    }
    assert len(declared) >= 15
    assert {where: name for where, name in declared.items() if not name.endswith("_total")} == {}
