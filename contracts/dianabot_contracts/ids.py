"""Event ids: UUIDv7 (RFC 9562), time-ordered so ledger inserts stay index-friendly."""

from __future__ import annotations

import os
import time
import uuid

# A fixed namespace for ids derived from business keys (e.g. a scheduler slot), see `derived_event_id`.
DERIVED_NAMESPACE = uuid.UUID("4f3c2a3e-2d0b-4bb9-9a59-6a0e7f0d1b7a")


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 68) << 64  # 12 random bits
    value |= 0b10 << 62  # variant
    value |= rand & (2**62 - 1)
    return uuid.UUID(int=value)


def derived_event_id(*parts: object) -> uuid.UUID:
    """The same business key always gives the same id, so a re-emitted event is a duplicate."""
    return uuid.uuid5(DERIVED_NAMESPACE, "|".join(str(p) for p in parts))
