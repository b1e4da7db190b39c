"""Telegram's send limits as sliding windows, the retry_after bookkeeping, and rate statistics.

Only delivered messages occupy a window: a request answered 429 is not delivered, so it must not
make the next, well-timed request fail too.  One API call counts as one message (an album sent with
sendMediaGroup is one unit), which is what a client-side limiter counts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["global", "chat", "group"]
KINDS: tuple[Kind, ...] = ("global", "chat", "group")
# A scope is what a retry_after is announced for: the whole bot or one chat.
Scope = int | Literal["global"]


@dataclass(frozen=True)
class RateLimit:
    """At most `count` messages in any `window_s`-second sliding window."""

    count: int
    window_s: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.window_s <= 0:
            raise ValueError("a rate limit needs count >= 1 and window_s > 0")


def kind_of(scope: Scope) -> Kind:
    if scope == "global":
        return "global"
    # Telegram's ids: users are positive, groups, supergroups and channels negative.
    return "chat" if scope > 0 else "group"


class Window:
    """Timestamps of the events of the last `span` seconds, oldest first."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._times: deque[float] = deque()

    def _trim(self, now: float) -> None:
        # An event at t leaves the window at exactly t + span, so a sender waiting the full span succeeds.
        while self._times and self._times[0] <= now - self.span:
            self._times.popleft()

    def count(self, now: float) -> int:
        self._trim(now)
        return len(self._times)

    def add(self, now: float) -> int:
        self._trim(now)
        self._times.append(now)
        return len(self._times)

    def frees_in(self, now: float, limit: int) -> float:
        """Seconds until fewer than `limit` events remain (0 when that is already so)."""
        self._trim(now)
        if len(self._times) < limit:
            return 0.0
        return self._times[len(self._times) - limit] + self.span - now


@dataclass
class ChatRates:
    sends: int = 0
    """Delivered send calls (an album is one)."""
    max_rate_1s: int = 0
    max_rate_60s: int = 0


@dataclass
class RateStats:
    """Observed rates, limits or not: what a benchmark reads to see how fast a sender really went."""

    max_global_rate_1s: int = 0
    max_global_attempt_rate_1s: int = 0
    per_chat: dict[int, ChatRates] = field(default_factory=dict)
    _global: Window = field(default_factory=lambda: Window(1.0))
    _attempts: Window = field(default_factory=lambda: Window(1.0))
    _chat_1s: dict[int, Window] = field(default_factory=dict)
    _chat_60s: dict[int, Window] = field(default_factory=dict)

    def attempt(self, now: float) -> None:
        self.max_global_attempt_rate_1s = max(self.max_global_attempt_rate_1s, self._attempts.add(now))

    def delivered(self, chat_id: int, now: float) -> None:
        self.max_global_rate_1s = max(self.max_global_rate_1s, self._global.add(now))
        rates = self.per_chat.setdefault(chat_id, ChatRates())
        rates.sends += 1
        one = self._chat_1s.setdefault(chat_id, Window(1.0)).add(now)
        sixty = self._chat_60s.setdefault(chat_id, Window(60.0)).add(now)
        rates.max_rate_1s = max(rates.max_rate_1s, one)
        rates.max_rate_60s = max(rates.max_rate_60s, sixty)

    def to_json(self) -> dict[str, Any]:
        private = [r.max_rate_1s for c, r in self.per_chat.items() if c > 0]
        groups = [r.max_rate_60s for c, r in self.per_chat.items() if c < 0]
        return {
            "max_global_rate_1s": self.max_global_rate_1s,
            "max_global_attempt_rate_1s": self.max_global_attempt_rate_1s,
            "max_private_chat_rate_1s": max(private, default=0),
            "max_group_chat_rate_60s": max(groups, default=0),
            "per_chat": {str(c): asdict(r) for c, r in sorted(self.per_chat.items())},
        }


@dataclass(frozen=True)
class Rejection:
    retry_after: int
    kinds: tuple[Kind, ...]


class RateLimiter:
    """Decides whether a send may be delivered now; counts violations and ignored retry_after."""

    def __init__(
        self,
        *,
        global_limit: RateLimit | None,
        private_chat_limit: RateLimit | None,
        group_limit: RateLimit | None,
        enforce_retry_after: bool = True,
    ) -> None:
        self.global_limit = global_limit
        self.private_chat_limit = private_chat_limit
        self.group_limit = group_limit
        self.enforce_retry_after = enforce_retry_after
        self.reset()

    def reset(self) -> None:
        self.violations: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self.violations_total = 0
        self.retry_after_ignored = 0
        self.stats = RateStats()
        self._penalties: dict[Scope, float] = {}
        self._windows: dict[Scope, Window] = {}

    def configure(
        self,
        *,
        global_limit: RateLimit | None,
        private_chat_limit: RateLimit | None,
        group_limit: RateLimit | None,
        enforce_retry_after: bool,
    ) -> None:
        self.global_limit = global_limit
        self.private_chat_limit = private_chat_limit
        self.group_limit = group_limit
        self.enforce_retry_after = enforce_retry_after
        # Window spans may have changed; start them afresh rather than mix spans.
        self._windows.clear()

    def limit_for(self, scope: Scope) -> RateLimit | None:
        kind = kind_of(scope)
        if kind == "global":
            return self.global_limit
        return self.private_chat_limit if kind == "chat" else self.group_limit

    def _active_penalties(self, chat_id: int, now: float) -> dict[Scope, float]:
        scopes: tuple[Scope, ...] = ("global", chat_id)
        return {s: self._penalties[s] - now for s in scopes if now < self._penalties.get(s, -math.inf)}

    def note_arrival(self, chat_id: int, now: float) -> bool:
        """Count a send that arrives before an announced retry_after has elapsed; True if it did."""
        self.stats.attempt(now)
        if self._active_penalties(chat_id, now):
            self.retry_after_ignored += 1
            return True
        return False

    def _window_waits(self, chat_id: int, now: float) -> dict[Scope, float]:
        waits: dict[Scope, float] = {}
        scopes: tuple[Scope, ...] = ("global", chat_id)
        for scope in scopes:
            limit = self.limit_for(scope)
            if limit is None:
                continue
            window = self._windows.setdefault(scope, Window(limit.window_s))
            wait = window.frees_in(now, limit.count)
            if wait > 0:
                waits[scope] = wait
        return waits

    def admit(self, chat_id: int, now: float) -> Rejection | None:
        """None when the send may be delivered; otherwise the 429 to answer (and it is counted)."""
        waits = self._window_waits(chat_id, now)
        if self.enforce_retry_after:
            # Telegram keeps refusing until the announced wait is over, even if the window has room.
            for scope, wait in self._active_penalties(chat_id, now).items():
                waits[scope] = max(waits.get(scope, 0.0), wait)
        if not waits:
            return None
        retry_after = max(1, math.ceil(max(waits.values())))
        kinds = tuple(sorted({kind_of(s) for s in waits}))
        for kind in kinds:
            self.violations[kind] += 1
        self.violations_total += 1
        for scope in waits:
            self.announce(scope, now, retry_after)
        return Rejection(retry_after, kinds)

    def announce(self, scope: Scope, now: float, retry_after: int) -> None:
        """Remember that the client was told to wait `retry_after` seconds for `scope`."""
        self._penalties[scope] = max(self._penalties.get(scope, -math.inf), now + retry_after)

    def delivered(self, chat_id: int, now: float) -> None:
        scopes: tuple[Scope, ...] = ("global", chat_id)
        for scope in scopes:
            limit = self.limit_for(scope)
            if limit is not None:
                self._windows.setdefault(scope, Window(limit.window_s)).add(now)
        self.stats.delivered(chat_id, now)

    def limits_json(self) -> dict[str, Any]:
        def one(limit: RateLimit | None) -> dict[str, Any] | None:
            return None if limit is None else asdict(limit)

        return {
            "global": one(self.global_limit),
            "private_chat": one(self.private_chat_limit),
            "group": one(self.group_limit),
            "enforce_retry_after": self.enforce_retry_after,
        }

    def counters_json(self) -> dict[str, Any]:
        return {
            "violations": dict(self.violations),
            "violations_total": self.violations_total,
            "retry_after_ignored": self.retry_after_ignored,
            **self.stats.to_json(),
        }
