"""A local Telegram Bot API double for tests, benchmarks and demos (`python -m dianabot_double`).

aiogram reaches it with
`Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base("http://127.0.0.1:8081")))`.
"""

from __future__ import annotations

from dianabot_double.faults import SEND_METHODS, Faults, ServerErrors, Slow, Storm
from dianabot_double.limits import RateLimit
from dianabot_double.records import MessageRecord, RequestRecord, Upload
from dianabot_double.server import (
    GLOBAL_LIMIT,
    GROUP_LIMIT,
    PRIVATE_CHAT_LIMIT,
    TelegramDouble,
)

__all__ = [
    "GLOBAL_LIMIT",
    "GROUP_LIMIT",
    "PRIVATE_CHAT_LIMIT",
    "SEND_METHODS",
    "Faults",
    "MessageRecord",
    "RateLimit",
    "RequestRecord",
    "ServerErrors",
    "Slow",
    "Storm",
    "TelegramDouble",
    "Upload",
]
