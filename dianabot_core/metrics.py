"""Prometheus metrics of the pipeline, the scheduler and the sender (one registry per process).

Names follow Prometheus' conventions: a counter ends in ``_total``; any other metric ends in its
unit, a base unit (``_seconds``, ``_bytes``) or, for a count of things, the things counted
(``dianabot_consumer_lag_records``, ``dianabot_alert_open_incidents``). tests/unit/test_metric_names.py
fails on a name that does not.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "dianabot_events_total",
    "Events seen by a handler, by outcome (handled, duplicates, retried, dead_lettered, ignored).",
    ["handler", "outcome"],
)
FAILURES = Counter(
    "dianabot_handler_failures_total", "Handler failures by error type.", ["handler", "error_type"]
)
HANDLER_SECONDS = Histogram(
    "dianabot_handler_seconds",
    "Time spent in a handler (its own work, not the batch around it).",
    ["handler"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
BATCH_SECONDS = Histogram(
    "dianabot_batch_seconds",
    "Time to process and commit one batch.",
    ["group"],
    buckets=(0.005, 0.02, 0.1, 0.5, 2, 10),
)
CONSUMER_STALLS = Counter(
    "dianabot_consumer_stalls_total",
    "Batches rewound because the database or Kafka was unreachable.",
    ["group"],
)
DEAD_LETTERS_STORED = Counter(
    "dianabot_dead_letters_stored_total",
    "Dead letters Kafka would not take (too large, topic problem), kept in PostgreSQL instead.",
    ["handler"],
)
OUTBOX_PARKED = Counter(
    "dianabot_outbox_parked_total",
    "Outbox rows Kafka can never take (e.g. over the size limit), parked with their reason.",
)
OUTBOX_PUBLISHED = Counter("dianabot_outbox_published_total", "Outbox rows published by the relay.")
LAG = Gauge("dianabot_consumer_lag_records", "Records behind the end of the topic.", ["group", "topic"])
OPEN_INCIDENTS = Gauge(
    "dianabot_alert_open_incidents", "Open alert incidents, as the last heartbeat in this process saw them."
)
LAST_HEARTBEAT = Gauge(
    "dianabot_monitoring_heartbeat_timestamp_seconds",
    "Unix time of the last monitoring heartbeat this process ran (alert when it stops advancing).",
)
GC_PAUSE_SECONDS = Histogram(
    "dianabot_gc_pause_seconds",
    "Garbage-collector pauses (the whole process, event loop included, stands still).",
    ["generation"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
