"""Reading a Bot API request's parameters as Telegram does: query string, JSON, urlencoded or multipart."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from dianabot_double.api import bad_request
from dianabot_double.records import Upload

# aiogram sends every value as a form string (numbers and booleans JSON-dumped, objects as JSON):
# these names are turned back into their types so records and handlers see what the caller meant.
INT_PARAMS = frozenset(
    [
        "chat_id",
        "from_chat_id",
        "user_id",
        "message_id",
        "message_thread_id",
        "member_limit",
        "expire_date",
        "until_date",
        "reply_to_message_id",
        "duration",
        "width",
        "height",
    ]
)
BOOL_PARAMS = frozenset(
    [
        "disable_notification",
        "protect_content",
        "creates_join_request",
        "revoke_messages",
        "only_if_banned",
        "has_spoiler",
        "show_caption_above_media",
        "allow_paid_broadcast",
        "supports_streaming",
        "disable_content_type_detection",
        "disable_web_page_preview",
        "allow_sending_without_reply",
    ]
)
JSON_PARAMS = frozenset(
    [
        "reply_markup",
        "media",
        "entities",
        "caption_entities",
        "reply_parameters",
        "link_preview_options",
        "message_ids",
    ]
)
_INT = re.compile(r"-?\d+")


def coerce(name: str, value: str) -> Any:
    if name in JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError:
            return value
    if name in INT_PARAMS and _INT.fullmatch(value):
        return int(value)
    if name in BOOL_PARAMS and value in {"true", "false"}:
        return value == "true"
    return value


async def _read_form(request: web.Request, params: dict[str, Any], files: dict[str, Upload]) -> None:
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, web.FileField):
            size = len(value.file.read())
            files[name] = Upload(value.filename, size, value.content_type)
        else:
            text = value if isinstance(value, str) else bytes(value).decode(errors="replace")
            params[name] = coerce(name, text)


async def read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload], str]:
    """Parameters from the query string and a JSON, urlencoded or multipart body, as Telegram takes them."""
    params: dict[str, Any] = {name: coerce(name, value) for name, value in request.query.items()}
    files: dict[str, Upload] = {}
    content_type = request.content_type
    if content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON object") from None
        if not isinstance(body, dict):
            raise bad_request("JSON object expected")
        params.update({k: coerce(k, v) if isinstance(v, str) else v for k, v in body.items()})
        return params, files, "json"
    if content_type in {"multipart/form-data", "application/x-www-form-urlencoded"}:
        await _read_form(request, params, files)
        return params, files, "multipart" if content_type == "multipart/form-data" else "urlencoded"
    return params, files, "query"
