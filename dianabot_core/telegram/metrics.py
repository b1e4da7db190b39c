"""Prometheus metrics of Telegram delivery (same registry as ``dianabot_core.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "dianabot_telegram_requests_total",
    "Bot API calls by method and result (ok, retry_after, migrated, forbidden, bad_request, "
    "server_error, network_error, unknown).",
    ["method", "result"],
)
REQUEST_SECONDS = Histogram(
    "dianabot_telegram_request_seconds",
    "Duration of one Bot API call.",
    ["method"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SENDS = Counter(
    "dianabot_telegram_sends_total",
    "Messages by ledger outcome (sent, already_sent, blocked, failed, unknown, unknown_not_resent).",
    ["priority", "outcome"],
)
SLOT_WAIT_SECONDS = Histogram(
    "dianabot_telegram_slot_wait_seconds",
    "Time a send waited for its rate-limit slot, by priority.",
    ["priority"],
    buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
RATE_LIMITED = Counter(
    "dianabot_telegram_rate_limited_total",
    "429 answers by the scope the sender paused (global, chat, admin).",
    ["scope"],
)
LATE_SLOTS = Counter(
    "dianabot_telegram_late_slots_total",
    "Reserved slots given up because the process woke too late to use them.",
)
BLOCKED_USERS = Counter(
    "dianabot_telegram_blocked_users_total", "Users newly marked as having blocked the bot (403)."
)
BROADCAST_RECIPIENTS = Counter(
    "dianabot_broadcast_fanned_out_total",
    "Broadcast recipients fanned out, by status (queued, skipped_blocked).",
    ["status"],
)
BROADCAST_PROGRESS = Gauge(
    "dianabot_broadcast_recipients",
    "Recipients of a broadcast that is still sending, by status (sent, failed, blocked, unknown, "
    "pending); the series is removed when nothing is pending.",
    ["broadcast_id", "status"],
)
