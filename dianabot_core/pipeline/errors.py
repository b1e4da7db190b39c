"""Failure classes: what is worth retrying, what is not, and what means "stop consuming".

A handler raises what it likes; `classify` decides. Unknown exceptions are treated as transient:
retrying a bug a few times costs little, while dropping a good event for a passing fault loses data.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from pydantic import ValidationError


class TransientError(Exception):
    """Worth retrying later: a timeout, a rate limit, a dependency that is briefly down.

    A subclass that knows how long to wait (a 429's retry_after) sets ``retry_after_s``: the
    pipeline's retry comes no earlier than that.
    """

    retry_after_s: float = 0.0


class PermanentError(Exception):
    """Will fail the same way every time: bad data, a missing entity, a forbidden action."""


class InfrastructureError(Exception):
    """The pipeline's own dependencies (database, Kafka) are down: stop, rewind, back off."""


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    ValueError,
    TypeError,
    LookupError,
    NotImplementedError,
)


def classify(error: BaseException) -> FailureKind:
    if isinstance(error, TransientError | asyncio.TimeoutError | TimeoutError | ConnectionError):
        return FailureKind.TRANSIENT
    if isinstance(error, _PERMANENT_TYPES):
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


def retry_after_s(error: BaseException) -> float:
    """How long the failure asked to wait at least before a retry (0 when it did not say)."""
    value = getattr(error, "retry_after_s", 0.0) if isinstance(error, TransientError) else 0.0
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def describe(error: BaseException, limit: int = 500) -> str:
    """A bounded, single-line description for headers and logs."""
    text = str(error) or type(error).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
