"""Injected faults: the failures Telegram really produces, switched on and off while a test runs.

Faults are pydantic models so the control API (`POST /_double/faults`) and Python callers share one
validation; counted faults (`count`) wear off after that many matching requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The methods that deliver a message: Telegram's send limits and the default fault targets.
SEND_METHODS: frozenset[str] = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendVideo",
        "sendAnimation",
        "sendDocument",
        "sendMediaGroup",
        "copyMessage",
    }
)


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methods: frozenset[str] | None = None
    """Methods the fault hits; None means the fault's default set."""

    def _default_methods(self) -> frozenset[str] | None:
        return SEND_METHODS

    def hits(self, method: str) -> bool:
        methods = self.methods if self.methods is not None else self._default_methods()
        return methods is None or method in methods


class ServerErrors(_Fault):
    """The next `count` matching requests answer `status` (default: send methods)."""

    count: int = Field(ge=1)
    status: int = Field(default=502, ge=500, le=599)
    html: bool = False
    """Answer nginx's HTML page, as Telegram's front end does on a 502: aiogram cannot decode it."""


class Slow(_Fault):
    """Answer `delay` seconds late: the next `count` matching requests, or every one if count is None.

    The request is decided (and delivered) on arrival; only the answer is late, which is what makes a
    client time out on a message that did go out.  Default: every API method.
    """

    delay: float = Field(gt=0)
    count: int | None = Field(default=None, ge=1)

    def _default_methods(self) -> frozenset[str] | None:
        return None


class Storm(_Fault):
    """The next `count` matching requests answer 429 with `retry_after` (default: send methods).

    `scope` says what the announced wait covers when counting `retry_after_ignored`: the whole bot
    or only the chat the request was for.
    """

    count: int = Field(ge=1)
    retry_after: int = Field(default=5, ge=1)
    scope: Literal["global", "chat"] = "global"


class Faults(BaseModel):
    """Every fault the double can inject.  Mutate it directly or through `apply`."""

    model_config = ConfigDict(extra="forbid")

    blocked: set[int] = Field(default_factory=set)
    """Chat ids whose user blocked the bot: 403 `Forbidden: bot was blocked by the user`."""
    chat_not_found: set[int] = Field(default_factory=set)
    """Chat ids answering 400 `Bad Request: chat not found`."""
    migrated: dict[int, int] = Field(default_factory=dict)
    """Group id -> supergroup id: 400 with `parameters.migrate_to_chat_id`."""
    not_members: set[int] = Field(default_factory=set)
    """User ids Telegram does not know in the chat: getChatMember `user not found`,
    ban/unban `PARTICIPANT_ID_INVALID`."""
    no_join_request: set[int] = Field(default_factory=set)
    """User ids without a pending join request: approve/decline answer `HIDE_REQUESTER_MISSING`."""
    server_errors: ServerErrors | None = None
    slow: Slow | None = None
    storm: Storm | None = None

    def apply(self, payload: Mapping[str, Any]) -> None:
        """Set the given fields (others stay); `"clear": true` first resets every fault.

        Raises pydantic.ValidationError on a bad payload, leaving the faults unchanged.
        """
        values = dict(payload)
        clear = bool(values.pop("clear", False))
        merged = (Faults() if clear else self).model_dump()
        merged.update(values)
        new = Faults.model_validate(merged)
        for name in Faults.model_fields:
            setattr(self, name, getattr(new, name))

    def take_slow(self, method: str) -> float:
        slow = self.slow
        if slow is None or not slow.hits(method):
            return 0.0
        if slow.count is not None:
            slow.count -= 1
            if slow.count == 0:
                self.slow = None
        return slow.delay

    def take_storm(self, method: str) -> Storm | None:
        storm = self.storm
        if storm is None or not storm.hits(method):
            return None
        storm.count -= 1
        if storm.count == 0:
            self.storm = None
        return storm

    def take_server_error(self, method: str) -> ServerErrors | None:
        errors = self.server_errors
        if errors is None or not errors.hits(method):
            return None
        errors.count -= 1
        if errors.count == 0:
            self.server_errors = None
        return errors

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
