"""Broadcast requests stay small records: an inline audience is capped, a longer one is stored instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import MAX_INLINE_RECIPIENTS, BroadcastRequested, MessageContent
from dianabot_core.record_limits import DEFAULT_MAX_RECORD_BYTES, record_size
from dianabot_core.telegram.broadcasts import continuation_of

CONTENT = MessageContent(text="x" * 4096)
LARGEST_ID = 2**63 - 1


def _record_bytes(payload: BroadcastRequested) -> int:
    """The record's size as the outbox relay measures it (the envelope as the body, the headers)."""
    envelope = EventEnvelope.wrap(payload, producer="dianabot-bot")
    return record_size(envelope.key.encode(), envelope.to_body(), envelope.to_headers())


def test_the_largest_inline_list_is_a_record_far_below_kafkas_limit() -> None:
    ids = tuple(LARGEST_ID - n for n in range(MAX_INLINE_RECIPIENTS))
    request = BroadcastRequested(broadcast_id="b" * 128, audience="list", user_ids=ids, content=CONTENT)

    size = _record_bytes(request)

    assert size < DEFAULT_MAX_RECORD_BYTES / 4, size


def test_a_longer_inline_list_is_refused_so_it_is_stored_instead() -> None:
    with pytest.raises(ValidationError, match="at most 10000 items"):
        BroadcastRequested(
            broadcast_id="b1", audience="list", user_ids=tuple(range(1, 200_002)), content=CONTENT
        )
    stored = BroadcastRequested(broadcast_id="b1", audience="list", recipients_stored=True, content=CONTENT)
    assert _record_bytes(stored) < 8_000


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"audience": "list"}, "needs user_ids or recipients_stored"),
        ({"audience": "vip", "recipients_stored": True}, "recipients_stored is for audience 'list'"),
        ({"audience": "list", "user_ids": (1,), "recipients_stored": True}, "without user_ids"),
    ],
)
def test_a_listed_audience_is_either_inline_or_stored(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        BroadcastRequested.model_validate({"broadcast_id": "b1", "content": CONTENT, **fields})


def test_a_continuation_carries_no_ids() -> None:
    inline = BroadcastRequested(
        broadcast_id="b1", audience="list", user_ids=tuple(range(1, 10_001)), content=CONTENT
    )
    everyone = BroadcastRequested(broadcast_id="b2", audience="all", content=CONTENT)

    continued = continuation_of(inline)

    assert (continued.user_ids, continued.recipients_stored) == ((), True)
    assert BroadcastRequested.model_validate(continued.model_dump()) == continued
    assert _record_bytes(continued) < _record_bytes(inline) / 10
    assert continuation_of(everyone) is everyone
