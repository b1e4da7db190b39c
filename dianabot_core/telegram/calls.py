"""Bot API calls as the sender makes them: delivering one message part, timing every call, and
describing its failure.

Only the sender (``dianabot_core.telegram.sender``, ``dianabot_core.telegram.members``) calls these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    InputMediaVideo,
    Message,
)
from aiogram.types.media_union import MediaUnion

from dianabot_contracts.events import Button, Media
from dianabot_core.redaction import redact_secrets
from dianabot_core.telegram import metrics
from dianabot_core.telegram.content import Part
from dianabot_core.telegram.errors import Failure, classify_failure

T = TypeVar("T")


async def timed(method: str, call: Awaitable[T]) -> T:
    """Await one Bot API call, counting it by result and timing it."""
    started = time.perf_counter()
    result = "ok"
    try:
        return await call
    except asyncio.CancelledError:
        result = "cancelled"
        raise
    except Exception as error:
        result = classify_failure(error).kind.value
        raise
    finally:
        metrics.REQUESTS.labels(method, result).inc()
        metrics.REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)


def classified(error: BaseException) -> Failure:
    """What a failed call means, described fit for the ledger, logs and dead letters: aiohttp's
    errors may quote the request URL, which holds the bot token.

    Raise what the pipeline should see outside the ``except`` block that caught `error`, so it does
    not chain aiohttp's error either.
    """
    failure = classify_failure(error)
    return replace(failure, description=redact_secrets(failure.description))


async def deliver(bot: Bot, part: Part, chat_id: int) -> int | None:
    """Send `part`; the message id Telegram gave it (an album's first item's)."""
    markup = _keyboard(part.buttons)
    protect = part.protect_content
    if part.method == "sendMessage":
        message = await bot.send_message(
            chat_id, part.text or "", reply_markup=markup, protect_content=protect
        )
    elif part.method == "sendMediaGroup":
        sent = await bot.send_media_group(chat_id, _album(part), protect_content=protect)
        return sent[0].message_id if sent else None
    else:
        message = await _send_single_media(bot, part, chat_id, markup)
    return message.message_id


async def _send_single_media(
    bot: Bot, part: Part, chat_id: int, markup: InlineKeyboardMarkup | None
) -> Message:
    media = part.media[0]
    common: dict[str, Any] = {
        "caption": part.text,
        "reply_markup": markup,
        "protect_content": part.protect_content,
    }
    if media.kind == "photo":
        return await bot.send_photo(chat_id, media.file, **common)
    if media.kind == "video":
        return await bot.send_video(chat_id, media.file, **common)
    if media.kind == "animation":
        return await bot.send_animation(chat_id, media.file, **common)
    return await bot.send_document(chat_id, media.file, **common)


def _keyboard(rows: tuple[tuple[Button, ...], ...]) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=b.text, url=b.url, callback_data=b.callback_data) for b in row]
            for row in rows
        ]
    )


def _album(part: Part) -> list[MediaUnion]:
    items: list[MediaUnion] = []
    for index, media in enumerate(part.media):
        caption = part.text if index == 0 else None
        items.append(_album_item(media, caption))
    return items


def _album_item(media: Media, caption: str | None) -> InputMediaPhoto | InputMediaVideo | InputMediaDocument:
    if media.kind == "photo":
        return InputMediaPhoto(media=media.file, caption=caption)
    if media.kind == "video":
        return InputMediaVideo(media=media.file, caption=caption)
    return InputMediaDocument(media=media.file, caption=caption)
