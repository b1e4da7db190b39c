"""What the double saw and what it delivered: plain records, JSON-ready, never holding the token."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Upload:
    """A file part of a multipart request, summarised (the bytes are not kept)."""

    filename: str
    size: int
    content_type: str


@dataclass
class RequestRecord:
    """One Bot API request: recorded on arrival, completed with its outcome before the answer."""

    seq: int
    method: str
    chat_id: int | str | None
    params: dict[str, Any]
    files: dict[str, Upload]
    encoding: str
    """How the client encoded it: `urlencoded`, `multipart`, `json` or `query`."""
    received_at: float
    """Wall-clock Unix time of arrival."""
    monotonic: float
    """The double's clock at arrival (what the limits use)."""
    status: int = 0
    outcome: str = "pending"
    description: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    message_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MessageRecord:
    """A message the double delivered (it appears in the chat, as far as anyone can tell)."""

    chat_id: int
    message_id: int
    method: str
    text: str | None
    caption: str | None
    media_type: str | None
    media: str | None
    """The URL or file_id sent, or `upload:<filename>` for a file uploaded in the request."""
    reply_markup: dict[str, Any] | None
    sent_at: float
    monotonic: float
    media_group_id: str | None = None
    copied_from: tuple[int, int] | None = None
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
