"""Keeping secrets out of what the service writes: logs, spans, ledger rows, dead-letter headers."""

from __future__ import annotations

import re

# A Bot API token is "<bot id>:<secret>": in a URL path after "/bot" (aiogram's requests, file
# downloads), or on its own in a real token's shape (35 characters of secret).
_BOT_TOKEN = re.compile(r"(?<=/bot)\d+:[^/\s?#'\"]+|\b\d{5,}:[A-Za-z0-9_-]{30,}")
REDACTED = "<redacted>"


def redact_secrets(text: str) -> str:
    """`text` with every Bot API token replaced by ``<redacted>``."""
    return _BOT_TOKEN.sub(REDACTED, text)
