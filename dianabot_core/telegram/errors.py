"""What a Bot API failure means for the job, and whether the message may have gone out.

Two questions are answered for every aiogram exception:

* **retry?** — ``TelegramTransientError`` (a ``TransientError``: the pipeline retries with backoff)
  for 5xx, undecodable answers (nginx's HTML 502), network errors, timeouts and 401;
  ``TelegramPermanentError`` (a ``PermanentError``: dead letter with the reason) for 400 and for
  403 from a group or channel. A private chat's 403 is not an error of the job: the user blocked
  the bot, which the sender records and reports as an outcome.
* **delivered?** — Telegram answered (any status): not delivered unless it said ok. The call was cut
  off after the request may have left (timeout, dropped connection, cancellation): unknown.
  A refused connection: not delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiohttp import ClientConnectorError

from dianabot_core.pipeline.errors import PermanentError, TransientError


class TelegramTransientError(TransientError):
    """Worth retrying: Telegram or the network failed this time."""


class TelegramRateLimited(TelegramTransientError):
    """The limits (or a 429's retry_after) ask for a longer wait than one call may absorb."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SendInFlight(TelegramTransientError):
    """Another attempt of the same send started moments ago and has no outcome yet."""


class TelegramPermanentError(PermanentError):
    """Telegram refused the request for good (bad request, chat not found, bot not in the chat)."""


class OutcomeUnknown(TelegramTransientError):
    """The call was cut off and the notification asked to be resent in that case."""


class ApiFailureKind(StrEnum):
    RETRY_AFTER = "retry_after"
    MIGRATED = "migrated"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"
    SERVER = "server_error"
    NETWORK = "network_error"
    UNKNOWN = "unknown"  # cut off mid-call


@dataclass(frozen=True)
class Failure:
    """One failed Bot API call, classified."""

    kind: ApiFailureKind
    description: str
    delivered_maybe: bool = False
    retry_after_s: float = 0.0
    migrate_to_chat_id: int | None = None


def classify_failure(error: BaseException) -> Failure:
    """Map an aiogram (or asyncio) exception onto what the sender does next."""
    if isinstance(error, TelegramRetryAfter):
        return Failure(ApiFailureKind.RETRY_AFTER, error.message, retry_after_s=float(error.retry_after))
    if isinstance(error, TelegramMigrateToChat):
        return Failure(ApiFailureKind.MIGRATED, error.message, migrate_to_chat_id=error.migrate_to_chat_id)
    if isinstance(error, TelegramForbiddenError):
        return Failure(ApiFailureKind.FORBIDDEN, error.message)
    if isinstance(error, TelegramBadRequest):
        return Failure(ApiFailureKind.BAD_REQUEST, error.message)
    if isinstance(error, TelegramNetworkError):
        # aiogram raises it `from` the aiohttp error; a refused connection never carried the request.
        refused = isinstance(error.__cause__, ClientConnectorError)
        return Failure(
            ApiFailureKind.NETWORK if refused else ApiFailureKind.UNKNOWN,
            error.message,
            delivered_maybe=not refused,
        )
    if isinstance(error, TelegramServerError | ClientDecodeError):
        # Telegram (or its front end) answered with an error: the message was not accepted.
        return Failure(ApiFailureKind.SERVER, _describe(error))
    if isinstance(error, TelegramAPIError):  # 401, 404, 409, 413: a misconfiguration, retried while fixed
        return Failure(ApiFailureKind.SERVER, error.message)
    if isinstance(error, AiogramError):
        return Failure(ApiFailureKind.SERVER, _describe(error))
    return Failure(ApiFailureKind.UNKNOWN, _describe(error), delivered_maybe=True)


def _describe(error: BaseException) -> str:
    text = " ".join((str(error) or type(error).__name__).split())
    return text[:300]


def is_not_member(description: str) -> bool:
    """Telegram's ways of saying the user is not (or no longer) in the chat: a kick is then done."""
    lowered = description.lower()
    return any(
        marker in lowered
        for marker in ("user not found", "participant_id_invalid", "user_not_participant", "member not found")
    )


def is_missing_join_request(description: str) -> bool:
    lowered = description.lower()
    return "hide_requester_missing" in lowered or "user_already_participant" in lowered
