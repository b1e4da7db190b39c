"""How one ``MessageContent`` becomes Bot API calls ("parts"), each sent and recorded on its own.

Most content is one call: text with buttons (``sendMessage``), or one photo/video/animation/document
with its caption and buttons. Telegram cannot put buttons on an album or a caption longer than
1024 characters on media, so those become two calls: the media, then the text with the buttons.
"""

from __future__ import annotations

from dataclasses import dataclass

from dianabot_contracts.events import Button, Media, MessageContent
from dianabot_core.telegram.errors import TelegramPermanentError

CAPTION_LIMIT = 1024
ALBUM_LIMIT = 10
SINGLE_MEDIA_METHODS = {
    "photo": "sendPhoto",
    "video": "sendVideo",
    "animation": "sendAnimation",
    "document": "sendDocument",
}


@dataclass(frozen=True)
class Part:
    """One Bot API call of a message."""

    method: str
    text: str | None = None  # the message text, or the caption of media
    media: tuple[Media, ...] = ()
    buttons: tuple[tuple[Button, ...], ...] = ()
    protect_content: bool = False


def plan_parts(content: MessageContent) -> list[Part]:
    """The calls that deliver `content`, in order; raises TelegramPermanentError for impossible content."""
    protect = content.protect_content
    if not content.media:
        return [Part("sendMessage", text=content.text, buttons=content.buttons, protect_content=protect)]
    fits = content.text is None or len(content.text) <= CAPTION_LIMIT
    if len(content.media) == 1:
        media = content.media
        method = SINGLE_MEDIA_METHODS[media[0].kind]
        if fits:
            return [Part(method, content.text, media, content.buttons, protect)]
        return [Part(method, None, media, (), protect), _text_part(content)]
    _check_album(content.media)
    needs_text_part = bool(content.buttons) or not fits
    if needs_text_part and not content.text:
        raise TelegramPermanentError("buttons on an album need a text to sit under")
    caption = None if needs_text_part else content.text
    album = Part("sendMediaGroup", caption, content.media, (), protect)
    return [album, _text_part(content)] if needs_text_part else [album]


def _text_part(content: MessageContent) -> Part:
    return Part("sendMessage", content.text, (), content.buttons, content.protect_content)


def _check_album(media: tuple[Media, ...]) -> None:
    if len(media) > ALBUM_LIMIT:
        raise TelegramPermanentError(f"an album holds at most {ALBUM_LIMIT} items, got {len(media)}")
    kinds = {m.kind for m in media}
    if "animation" in kinds:
        raise TelegramPermanentError("animations cannot be sent in an album")
    if "document" in kinds and kinds != {"document"}:
        raise TelegramPermanentError("documents cannot be mixed with photos or videos in an album")
