"""What the heartbeat's checks report: findings with a stable alert key, and the keys each check covers.

Each check returns a ``CheckResult``: its findings and the keys it *covers* (could have found). An
open incident whose key a check covers but no longer finds has cleared; one whose check could not
run covers nothing and stays open, so a blind heartbeat never announces a recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dianabot_core.incidents import Severity

KEY_PREFIX = "monitoring."


@dataclass(frozen=True)
class Finding:
    """Something wrong now; ``key`` is the same for as long as it stays wrong (one incident)."""

    key: str
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    findings: list[Finding]
    keys: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def covers(self, key: str) -> bool:
        return key in self.keys or key.startswith(self.prefixes)
