"""Prometheus metrics of the scheduler (same process-wide registry as ``dianabot_core.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICK_LATENESS = Histogram(
    "dianabot_scheduler_tick_lateness_seconds",
    "How late an on-time tick was emitted (committed to the outbox) after its slot.",
    ["job"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TICKS = Counter("dianabot_scheduler_ticks_total", "Ticks emitted, by job and kind.", ["job", "kind"])
SLOTS_SKIPPED = Counter(
    "dianabot_scheduler_slots_skipped_total",
    "Missed slots not emitted (catch-up policy or window), by job.",
    ["job"],
)
IS_LEADER = Gauge("dianabot_scheduler_is_leader", "1 while this replica holds the scheduler lock.")
LEADERSHIPS = Counter("dianabot_scheduler_leaderships_total", "Times this replica took the lead.")
