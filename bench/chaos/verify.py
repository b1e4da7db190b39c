"""Comparing what the service did with what it had to do: effects, messages, dead letters, ticks.

Effects are read from the tables the handlers write (``processed_events``, ``users``,
``channel_join_requests``, ``channel_posts``, ``transactions``, ``balances``, ``telegram_sends``),
messages from the Bot API double, dead letters from ``dianabot.dead_letters`` plus the ones stored
in ``dead_letter_records`` because Kafka could not take them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos.cluster import PROBE_JOB
from bench.chaos.expect import Expected, Model
from bench.chaos.fuzz import FuzzCase
from bench.chaos.readback import Record
from bench.chaos.workload import ACTIVITY_USERS, MISSING_USERS, PRODUCER, REGISTERED_USERS
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.topics import SCHEDULER_TICKS

FUZZ_PREFIX = b"chaos:fuzz:"
Origin = tuple[str, int, int]


# --- what landed in Kafka ------------------------------------------------------------------------


@dataclass
class Landed:
    valid_records: int = 0
    fuzz: dict[int, list[Origin]] = field(default_factory=lambda: defaultdict(list))
    probe_ticks: list[tuple[str, str]] = field(default_factory=list)  # (event id, slot)


def _json(value: bytes | None) -> Any:
    try:
        return json.loads(value or b"")
    except (ValueError, RecursionError):
        return None


def fuzz_id(key: bytes | None) -> int | None:
    if key is None or not key.startswith(FUZZ_PREFIX):
        return None
    try:
        return int(key[len(FUZZ_PREFIX) :])
    except ValueError:
        return None


def read_landed(records: list[Record], model: Model) -> Landed:
    """Feed the run's valid events to the model in broker order; note where each fuzz record went."""
    landed = Landed()
    for record in records:
        n = fuzz_id(record.key)
        if n is not None:
            landed.fuzz[n].append((record.topic, record.partition, record.offset))
            continue
        body = _json(record.value)
        if not isinstance(body, dict):
            continue
        if record.topic == SCHEDULER_TICKS.name and body.get("payload", {}).get("job") == PROBE_JOB:
            landed.probe_ticks.append((str(body.get("event_id")), str(body["payload"].get("slot"))))
        elif body.get("producer") == PRODUCER:
            landed.valid_records += 1
            model.add(record.topic, EventEnvelope.model_validate(body))
    return landed


# --- the database --------------------------------------------------------------------------------


@dataclass
class State:
    ledger: set[tuple[str, UUID]]
    users: set[int]
    last_active: dict[int, datetime | None]
    join_requests: dict[tuple[int, int], datetime]
    posts: dict[str, str | None]
    transactions: dict[str, tuple[int, int]]  # key -> (user, amount)
    balance_drift: int
    sends: dict[str, tuple[str, int]]  # key -> (status, chat)
    stored_dead_letters: list[tuple[str, str, int, int, bytes | None]] | None
    outbox_pending: int


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


# The run's users, by id range (see workload).
MINE = {"low": ACTIVITY_USERS, "high": MISSING_USERS}
SQL = {
    "ledger": "SELECT consumer, event_id FROM processed_events",
    "users": "SELECT id FROM users WHERE id > :a AND id < :b",
    "last_active": "SELECT id, last_active_at FROM users WHERE id > :a AND id < :b",
    "joins": "SELECT chat_id, telegram_user_id, requested_at FROM channel_join_requests",
    "posts": "SELECT external_id, content->>'text' FROM channel_posts WHERE external_id LIKE 'chaos-post-%'",
    "transactions": "SELECT idempotency_key, user_id, amount FROM transactions "
    "WHERE user_id > :low AND user_id < :high",
    "drift": "SELECT b.user_id FROM balances b LEFT JOIN transactions t ON t.user_id = b.user_id "
    "WHERE b.user_id > :low AND b.user_id < :high "
    "GROUP BY b.user_id, b.amount HAVING b.amount <> COALESCE(SUM(t.amount), 0)",
    "sends": "SELECT send_key, status, chat_id FROM telegram_sends",
    "stored": 'SELECT handler, topic, "partition", "offset", key FROM dead_letter_records '
    "WHERE publish_error IS NOT NULL",
    "outbox": "SELECT count(*) FROM outbox WHERE published_at IS NULL",
}


async def read_state(engine: AsyncEngine) -> State:
    activity = {"a": ACTIVITY_USERS, "b": ACTIVITY_USERS + 10**7}
    return State(
        ledger={(c, e) for c, e in await _rows(engine, SQL["ledger"])},
        users={r[0] for r in await _rows(engine, SQL["users"], a=REGISTERED_USERS, b=MISSING_USERS)},
        last_active={u: at for u, at in await _rows(engine, SQL["last_active"], **activity)},
        join_requests={(c, u): at for c, u, at in await _rows(engine, SQL["joins"])},
        posts={k: t for k, t in await _rows(engine, SQL["posts"])},
        transactions={k: (u, a) for k, u, a in await _rows(engine, SQL["transactions"], **MINE)},
        balance_drift=len(await _rows(engine, SQL["drift"], **MINE)),
        sends={k: (str(s), c) for k, s, c in await _rows(engine, SQL["sends"])},
        stored_dead_letters=await _stored_dead_letters(engine),
        outbox_pending=await outbox_pending(engine),
    )


async def _stored_dead_letters(engine: AsyncEngine) -> list[tuple[str, str, int, int, bytes | None]] | None:
    """Dead letters Kafka refused, kept in PostgreSQL; None when the table does not exist (yet)."""
    try:
        rows = await _rows(engine, SQL["stored"])
    except DBAPIError:
        return None
    return [(h, t, int(p), int(o), None if k is None else bytes(k)) for h, t, p, o, k in rows]


async def outbox_pending(engine: AsyncEngine) -> int:
    return int((await _rows(engine, SQL["outbox"]))[0][0])


# --- effects -------------------------------------------------------------------------------------


def _tally(expected: int, found: int, duplicated: int = 0, **extra: int) -> dict[str, int]:
    return {"expected": expected, "found": found, "lost": expected - found, "duplicated": duplicated, **extra}


def effects_report(expected: Expected, state: State) -> dict[str, dict[str, int]]:
    ignored_rows = sum(1 for _, e in state.ledger if e in expected.ignored)
    paid = {k: a for k, (_, a) in state.transactions.items()}
    return {
        "ledger_rows": _tally(
            len(expected.ledger), len(expected.ledger & state.ledger), unexpected=ignored_rows
        ),
        "users_registered": _tally(len(expected.users), len(expected.users & state.users)),
        "last_active_at": _tally(
            len(expected.last_active),
            sum(1 for u, at in expected.last_active.items() if state.last_active.get(u) == at),
        ),
        "join_requests": _tally(
            len(expected.join_requests),
            sum(1 for k, at in expected.join_requests.items() if state.join_requests.get(k) == at),
        ),
        "posts": _tally(
            len(expected.posts), sum(1 for k, t in expected.posts.items() if state.posts.get(k) == t)
        ),
        "transactions": _tally(
            len(expected.transactions),
            sum(1 for k, a in expected.transactions.items() if paid.get(k) == a),
            duplicated=sum(1 for k in paid if k not in expected.transactions) + state.balance_drift,
        ),
        "reminder_sends": _reminders(expected, state),
    }


def _reminders(expected: Expected, state: State) -> dict[str, int]:
    """Sent reminders; one whose send was cut off mid-call (``unknown``: the process died in it) is
    not sent again, by the send ledger's at-most-once rule, and is counted apart."""
    statuses = [state.sends.get(k, ("", 0))[0] for k in expected.reminder_sends]
    unknown = statuses.count("unknown") + statuses.count("pending")
    found = statuses.count("sent")
    return {
        "expected": len(statuses),
        "found": found,
        "lost": len(statuses) - found - unknown,
        "duplicated": 0,
        "unknown_outcome": unknown,
    }


# --- Telegram ------------------------------------------------------------------------------------


def _is_mine(chat: int) -> bool:
    return ACTIVITY_USERS < chat < MISSING_USERS


def telegram_report(
    expected: Expected, messages: list[dict[str, Any]], stats: dict[str, Any], state: State
) -> dict[str, Any]:
    found = Counter(int(m["chat_id"]) for m in messages if _is_mine(int(m["chat_id"])))
    texts = Counter(
        (int(m["chat_id"]), str(m.get("text")))
        for m in messages
        if int(m["chat_id"]) in {c for c, _ in expected.texts}
    )
    unknown = Counter(
        chat for status, chat in state.sends.values() if status in ("unknown", "pending") and _is_mine(chat)
    )
    short = {
        chat: expected.messages[chat] - found[chat]
        for chat in expected.messages
        if found[chat] < expected.messages[chat]
    }
    return {
        "expected": sum(expected.messages.values()),
        "found": sum(min(found[c], n) for c, n in expected.messages.items()),
        "lost": sum(short.values()),
        "lost_with_unknown_outcome": sum(min(n, unknown[c]) for c, n in short.items()),
        "duplicated": sum(max(0, n - expected.messages[c]) for c, n in found.items()),
        "notification_texts_lost": sum(max(0, n - texts[k]) for k, n in expected.texts.items()),
        "notification_texts_duplicated": sum(max(0, n - expected.texts[k]) for k, n in texts.items()),
        "sends_unknown_outcome": sum(unknown.values()),
        "other_chats": sum(1 for m in messages if not _is_mine(int(m["chat_id"]))),
        "violations": stats.get("violations", {}),
        "violations_total": stats.get("violations_total", 0),
        "retry_after_ignored": stats.get("retry_after_ignored", 0),
    }


# --- dead letters --------------------------------------------------------------------------------


def _headers(record: Record) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}


def _origin(headers: dict[str, str]) -> Origin | None:
    try:
        return (
            headers["x-original-topic"],
            int(headers["x-original-partition"]),
            int(headers["x-original-offset"]),
        )
    except (KeyError, ValueError):
        return None


@dataclass
class LetterCount:
    found: Counter[tuple[str, int]] = field(default_factory=Counter)
    reasons: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    published_at: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    wrong_origin: int = 0
    valid_events: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)
    stored: int = 0


def _count_letter(
    count: LetterCount,
    landed: Landed,
    letter: tuple[str, str, float],  # handler, reason, when Kafka took it (s since the epoch)
    key: bytes | None,
    origin: Origin | None,
    value: bytes | None,
) -> None:
    handler, reason, at = letter
    n = fuzz_id(key)
    if n is not None:
        count.found[(handler, n)] += 1
        count.reasons[(handler, n)].append(reason[:120])
        count.published_at[(handler, n)].append(at)
        if origin not in landed.fuzz.get(n, []):
            count.wrong_origin += 1
        return
    body = _json(value)
    if isinstance(body, dict) and body.get("producer") == PRODUCER:
        count.valid_events[f"{handler}: {body.get('event_type')}: {reason[:80]}"] += 1
    else:
        event_type = body.get("event_type") if isinstance(body, dict) else "?"
        count.other[f"{handler}: {event_type}: {reason[:80]}"] += 1


def _after_a_crash(
    times: list[float], crashes: list[float], window_s: float = 3.0, gap_s: float = 5.0
) -> bool:
    """A second copy explained by a crash: a kill or outage began just after the first copy was
    published, before its claim could be marked (the claim is then published again, by design),
    and the next copy came later than a live process could have redone it. Copies closer together
    come from two passes over the record at once, which no crash explains."""
    first, *later = sorted(times)
    if not later or later[0] - first < gap_s:
        return False
    return any(first - 0.5 <= crash <= first + window_s for crash in crashes)


def dead_letter_report(
    letters: list[Record], state: State, cases: dict[int, FuzzCase], landed: Landed, crashes: list[float]
) -> dict[str, Any]:
    count = LetterCount()
    reasons: Counter[str] = Counter()
    for letter in letters:
        headers = _headers(letter)
        reason = headers.get("x-dlq-reason", "?")
        handler = headers.get("x-dlq-handler", "?")
        at = letter.timestamp / 1000
        _count_letter(count, landed, (handler, reason, at), letter.key, _origin(headers), letter.value)
        reasons[reason.split(":")[0]] += 1
    for handler, topic, partition, offset, key in state.stored_dead_letters or []:
        count.stored += 1
        _count_letter(
            count, landed, (handler, "stored in PostgreSQL", 0.0), key, (topic, partition, offset), None
        )
    expected = Counter(
        {(h, n): len(origins) for n, origins in landed.fuzz.items() for h in cases[n].expected_handlers}
    )
    found = count.found
    doubled = [k for k, n in found.items() if k in expected and n > expected[k]]
    return {
        "expected": sum(expected.values()),
        "found": sum(min(found[k], n) for k, n in expected.items()),
        "missing": sum(max(0, n - found[k]) for k, n in expected.items()),
        "duplicated": sum(found[k] - expected[k] for k in doubled),
        "duplicated_after_a_crash": sum(
            found[k] - expected[k] for k in doubled if _after_a_crash(count.published_at[k], crashes)
        ),
        "unexpected": sum(n for k, n in found.items() if k not in expected),
        "stored_in_postgres": count.stored if state.stored_dead_letters is not None else None,
        "naming_a_wrong_origin": count.wrong_origin,
        "valid_events_dead_lettered": sum(count.valid_events.values()),
        "valid_events_dead_lettered_by": dict(count.valid_events.most_common(8)),
        "other": sum(count.other.values()),
        "other_by": dict(count.other.most_common(8)),
        "by_reason": dict(reasons),
        "missing_by_category": _missing_by_category(expected, found, cases),
        "duplicates_seen": [
            {
                "handler": h,
                "category": cases[n].category,
                "fuzz_id": n,
                "published_at": sorted(round(t, 1) for t in count.published_at[(h, n)]),
                "after_a_crash": _after_a_crash(count.published_at[(h, n)], crashes),
            }
            for h, n in doubled
        ][:5],
        "unexpected_seen": [
            {"handler": h, "category": cases[n].category if n in cases else "?", "fuzz_id": n}
            for (h, n) in found
            if (h, n) not in expected
        ][:5],
    }


def _missing_by_category(
    expected: Counter[tuple[str, int]], found: Counter[tuple[str, int]], cases: dict[int, FuzzCase]
) -> dict[str, int]:
    missing: Counter[str] = Counter()
    for (handler, n), count in expected.items():
        if found[(handler, n)] < count:
            missing[cases[n].category] += count - found[(handler, n)]
    return dict(missing)


# --- the scheduler -------------------------------------------------------------------------------


def ticks_report(landed: Landed) -> dict[str, Any]:
    """Slots of the every-second probe job: each slot once from the first to the last seen."""
    slots: dict[str, set[str]] = defaultdict(set)
    for event_id, slot in landed.probe_ticks:
        slots[slot].add(event_id)
    try:
        seconds = sorted(int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()) for s in slots)
    except ValueError:
        return {"error": "unreadable slots"}
    span = seconds[-1] - seconds[0] + 1 if seconds else 0
    return {
        "probe_slots_expected": span,
        "probe_slots_found": len(seconds),
        "probe_slots_missing": span - len(set(seconds)),
        "probe_slots_with_two_ids": sum(1 for ids in slots.values() if len(ids) > 1),
        "probe_ticks_published_twice": len(landed.probe_ticks) - sum(len(ids) for ids in slots.values()),
    }
