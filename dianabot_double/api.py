"""The Bot API methods the double implements, answering the JSON Telegram answers.

Objects carry every field aiogram requires to parse them (Message, ChatInviteLink, ChatMember*,
ChatFullInfo); error descriptions are Telegram's own wording, since callers match on them.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dianabot_double.faults import Faults
from dianabot_double.records import MessageRecord, Upload

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
# Usernames (`@channel`) get stable synthetic ids from here downwards.
_USERNAME_IDS_START = -1009000000000


class ApiError(Exception):
    """A Bot API error answer: `{"ok": false, "error_code": status, "description": ...}`."""

    def __init__(
        self, status: int, description: str, outcome: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.outcome = outcome
        self.parameters = parameters

    @property
    def retry_after(self) -> int | None:
        value = (self.parameters or {}).get("retry_after")
        return value if isinstance(value, int) else None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(description: str, outcome: str = "bad_request") -> ApiError:
    return ApiError(400, f"Bad Request: {description}", outcome)


@dataclass
class Call:
    """One parsed request as a method handler sees it."""

    method: str
    params: dict[str, Any]
    files: dict[str, Upload]
    chat_id: int | None
    now: float
    wall: float


@dataclass
class Member:
    status: str
    until_date: int = 0


Handler = Callable[[Call], Any]


def _user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}


def _file_ids(seed: str) -> dict[str, str]:
    digest = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
    return {"file_id": f"DBL{digest[:29]}", "file_unique_id": f"DBLU{digest[29:40]}"}


class BotApi:
    """The state behind the methods: chats' message counters, delivered messages, members, links."""

    def __init__(
        self,
        *,
        bot_id: int,
        bot_username: str,
        faults: Faults,
        chat_types: dict[int, str],
        default_member_status: str,
    ) -> None:
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.faults = faults
        self.chat_types = chat_types
        self.default_member_status = default_member_status
        self.handlers: dict[str, Handler] = {
            "getMe": self.get_me,
            "getChat": self.get_chat,
            "sendMessage": self.send_message,
            "sendPhoto": self._send_media("photo"),
            "sendVideo": self._send_media("video"),
            "sendAnimation": self._send_media("animation"),
            "sendDocument": self._send_media("document"),
            "sendMediaGroup": self.send_media_group,
            "copyMessage": self.copy_message,
            "deleteMessage": self.delete_message,
            "banChatMember": self.ban_chat_member,
            "unbanChatMember": self.unban_chat_member,
            "getChatMember": self.get_chat_member,
            "approveChatJoinRequest": self._join_request("member"),
            "declineChatJoinRequest": self._join_request("left"),
            "createChatInviteLink": self.create_chat_invite_link,
            "revokeChatInviteLink": self.revoke_chat_invite_link,
        }
        # Telegram's method names are case-insensitive.
        self._by_lower = {name.lower(): name for name in self.handlers}
        self.reset()

    def reset(self) -> None:
        self.messages: list[MessageRecord] = []
        self.members: dict[tuple[int, int], Member] = {}
        self.invite_links: dict[str, dict[str, Any]] = {}
        self._last_ids: dict[int, int] = {}
        self._contents: dict[tuple[int, int], dict[str, Any]] = {}
        self._usernames: dict[str, int] = {}
        self._uploads = itertools.count(1)
        self._groups = itertools.count(1)

    def canonical(self, method: str) -> str | None:
        return self._by_lower.get(method.lower())

    # --- chats and users -------------------------------------------------------------------------

    @property
    def me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "DianaBot", "username": self.bot_username}

    def resolve_chat(self, value: Any) -> int | None:
        """A chat_id parameter as an int: numbers as they are, `@username` as a stable synthetic id."""
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if text.startswith("@") and len(text) > 1:
            return self._usernames.setdefault(text.lower(), _USERNAME_IDS_START - len(self._usernames))
        raise bad_request("chat not found", "chat_not_found")

    def chat_type(self, chat_id: int) -> str:
        if chat_id in self.chat_types:
            return self.chat_types[chat_id]
        if chat_id > 0:
            return "private"
        # -100… ids are supergroups and channels; the bots here post to channels.
        return "channel" if chat_id <= -1000000000000 else "group"

    def chat(self, chat_id: int) -> dict[str, Any]:
        kind = self.chat_type(chat_id)
        if kind == "private":
            return {"id": chat_id, "type": kind, "first_name": f"User {chat_id}"}
        return {"id": chat_id, "type": kind, "title": f"Chat {chat_id}"}

    @staticmethod
    def _require_chat(call: Call) -> int:
        if call.chat_id is None:
            raise bad_request("chat_id is empty")
        return call.chat_id

    @staticmethod
    def _int(call: Call, name: str) -> int:
        value = call.params.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{name} is empty" if value is None else f"invalid {name} specified")
        return value

    # --- messages --------------------------------------------------------------------------------

    def _deliver(
        self, call: Call, content: dict[str, Any], *, media_group_id: str | None = None
    ) -> dict[str, Any]:
        chat_id = self._require_chat(call)
        message_id = self._last_ids.get(chat_id, 0) + 1
        self._last_ids[chat_id] = message_id
        chat = self.chat(chat_id)
        message: dict[str, Any] = {"message_id": message_id, "date": int(call.wall), "chat": chat}
        # Channel posts come from the channel itself, not from the bot.
        message.update({"sender_chat": chat} if chat["type"] == "channel" else {"from": self.me})
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        message.update(content)
        self._contents[(chat_id, message_id)] = content
        self.messages.append(
            MessageRecord(
                chat_id=chat_id,
                message_id=message_id,
                method=call.method,
                text=content.get("text"),
                caption=content.get("caption"),
                media_type=content.get("_media_type"),
                media=content.get("_media"),
                reply_markup=content.get("reply_markup"),
                sent_at=call.wall,
                monotonic=call.now,
                media_group_id=media_group_id,
            )
        )
        return {k: v for k, v in message.items() if not k.startswith("_")}

    @staticmethod
    def _markup(call: Call) -> dict[str, Any]:
        markup = call.params.get("reply_markup")
        # Telegram echoes only inline keyboards in the sent Message.
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            return {"reply_markup": markup}
        return {}

    @staticmethod
    def _caption(params: dict[str, Any]) -> dict[str, Any]:
        caption = params.get("caption")
        if caption is None or caption == "":
            return {}
        if len(str(caption)) > CAPTION_LIMIT:
            raise bad_request("message caption is too long")
        content: dict[str, Any] = {"caption": str(caption)}
        if params.get("caption_entities"):
            content["caption_entities"] = params["caption_entities"]
        return content

    def send_message(self, call: Call) -> dict[str, Any]:
        self._require_chat(call)
        text = call.params.get("text")
        if text is None or not str(text).strip():
            raise bad_request("message text is empty")
        if len(str(text)) > TEXT_LIMIT:
            raise bad_request("message is too long")
        content: dict[str, Any] = {"text": str(text), **self._markup(call)}
        if call.params.get("entities"):
            content["entities"] = call.params["entities"]
        return self._deliver(call, content)

    def _media_ref(self, call: Call, value: Any) -> str:
        """The reference recorded for a media parameter; `attach://x` must name an uploaded part."""
        text = str(value)
        if not text.startswith("attach://"):
            return text
        upload = call.files.get(text.removeprefix("attach://"))
        if upload is None:
            raise bad_request("wrong file identifier/HTTP URL specified")
        return f"upload:{upload.filename}#{next(self._uploads)}"

    @staticmethod
    def _media_object(kind: str, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        base = _file_ids(f"{kind}:{ref}")
        if ref.startswith("DBL"):
            base["file_id"] = ref  # a file_id the double issued is sent back as itself
        if kind == "photo":
            small = _file_ids(f"{kind}:{ref}:small")
            return {"photo": [{**small, "width": 90, "height": 90}, {**base, "width": 1280, "height": 720}]}
        size = {
            "width": params.get("width", 1280),
            "height": params.get("height", 720),
            "duration": params.get("duration", 10),
        }
        if kind == "video":
            return {"video": {**base, **size, "mime_type": "video/mp4"}}
        if kind == "animation":
            # Telegram fills `document` too for animations, for old clients.
            return {"animation": {**base, **size}, "document": {**base, "mime_type": "video/mp4"}}
        name = ref.removeprefix("upload:").rsplit("/", 1)[-1].split("#")[0][:64]
        return {kind: {**base, "file_name": name or kind}}

    def _media_content(self, call: Call, kind: str, item: dict[str, Any]) -> dict[str, Any]:
        value = item.get("media") if "media" in item else item.get(kind)
        if value is None or value == "":
            raise bad_request(f"there is no {kind} in the request")
        ref = self._media_ref(call, value)
        content = {**self._media_object(kind, ref, item), **self._caption(item)}
        content.update({"_media_type": kind, "_media": ref})
        return content

    def _send_media(self, kind: str) -> Handler:
        def send(call: Call) -> dict[str, Any]:
            self._require_chat(call)
            content = self._media_content(call, kind, call.params)
            return self._deliver(call, {**content, **self._markup(call)})

        return send

    def send_media_group(self, call: Call) -> list[dict[str, Any]]:
        self._require_chat(call)
        media = call.params.get("media")
        if not isinstance(media, list) or not media:
            raise bad_request('parameter "media" is required')
        if len(media) > 10:
            raise bad_request("too many messages to send as an album")
        contents = []
        for item in media:
            if not isinstance(item, dict) or item.get("type") not in {"photo", "video", "document", "audio"}:
                raise bad_request("wrong type of the media group item")
            contents.append(self._media_content(call, str(item["type"]), item))
        group_id = f"{next(self._groups):018d}"
        return [self._deliver(call, content, media_group_id=group_id) for content in contents]

    def copy_message(self, call: Call) -> dict[str, Any]:
        self._require_chat(call)
        source_chat = self.resolve_chat(call.params.get("from_chat_id"))
        source_id = self._int(call, "message_id")
        content = self._contents.get((source_chat or 0, source_id))
        if content is None or self._find(source_chat or 0, source_id) is None:
            raise bad_request("message to copy not found")
        copied = {
            k: v for k, v in content.items() if k not in {"caption", "caption_entities", "reply_markup"}
        }
        copied.update(self._caption(call.params) if "caption" in call.params else self._caption(content))
        copied.update(self._markup(call))
        message = self._deliver(call, copied)
        self.messages[-1].copied_from = (source_chat or 0, source_id)
        return {"message_id": message["message_id"]}

    def _find(self, chat_id: int, message_id: int) -> MessageRecord | None:
        for record in reversed(self.messages):
            if record.chat_id == chat_id and record.message_id == message_id and not record.deleted:
                return record
        return None

    def delete_message(self, call: Call) -> bool:
        record = self._find(self._require_chat(call), self._int(call, "message_id"))
        if record is None:
            raise bad_request("message to delete not found")
        record.deleted = True
        return True

    # --- chats -----------------------------------------------------------------------------------

    def get_me(self, call: Call) -> dict[str, Any]:
        return {
            **self.me,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def get_chat(self, call: Call) -> dict[str, Any]:
        chat = self.chat(self._require_chat(call))
        gifts = ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription")
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {**dict.fromkeys(gifts, False), "gifts_from_channels": False},
        }

    # --- members ---------------------------------------------------------------------------------

    def member(self, chat_id: int, user_id: int) -> Member:
        return self.members.get((chat_id, user_id), Member(self.default_member_status))

    def set_member(self, chat_id: int, user_id: int, status: str, until_date: int = 0) -> None:
        if status not in {"member", "left", "kicked", "administrator", "creator"}:
            raise ValueError(f"unsupported member status {status!r}")
        self.members[(chat_id, user_id)] = Member(status, until_date)

    def _member_target(self, call: Call, error: str) -> tuple[int, int]:
        chat_id = self._require_chat(call)
        user_id = self._int(call, "user_id")
        if user_id in self.faults.not_members:
            raise bad_request(error, "not_member")
        return chat_id, user_id

    def ban_chat_member(self, call: Call) -> bool:
        chat_id, user_id = self._member_target(call, "PARTICIPANT_ID_INVALID")
        until = call.params.get("until_date")
        # Telegram treats a ban shorter than 30 s or longer than 366 days as forever (0).
        until_date = until if isinstance(until, int) and 30 <= until - call.wall <= 366 * 86400 else 0
        self.set_member(chat_id, user_id, "kicked", until_date)
        return True

    def unban_chat_member(self, call: Call) -> bool:
        chat_id, user_id = self._member_target(call, "PARTICIPANT_ID_INVALID")
        status = self.member(chat_id, user_id).status
        if status == "kicked":
            self.set_member(chat_id, user_id, "left")
        elif status == "member" and not call.params.get("only_if_banned"):
            # Telegram's documented surprise: without only_if_banned, unbanning a member removes them.
            self.set_member(chat_id, user_id, "left")
        return True

    def get_chat_member(self, call: Call) -> dict[str, Any]:
        chat_id, user_id = self._member_target(call, "user not found")
        if user_id == self.bot_id:
            return self._administrator()
        member = self.member(chat_id, user_id)
        result: dict[str, Any] = {"status": member.status, "user": _user(user_id)}
        if member.status == "kicked":
            result["until_date"] = member.until_date
        elif member.status == "administrator":
            result.update(self._administrator(), user=_user(user_id))
        elif member.status == "creator":
            result["is_anonymous"] = False
        return result

    def _administrator(self) -> dict[str, Any]:
        rights = [
            "can_be_edited",
            "can_manage_chat",
            "can_delete_messages",
            "can_manage_video_chats",
            "can_restrict_members",
            "can_promote_members",
            "can_change_info",
            "can_invite_users",
            "can_post_stories",
            "can_edit_stories",
            "can_delete_stories",
            "can_post_messages",
            "can_edit_messages",
            "can_pin_messages",
        ]
        return {
            "status": "administrator",
            "user": {**self.me},
            "is_anonymous": False,
            "can_send_welcome_messages": False,
            **dict.fromkeys(rights, True),
        }

    def _join_request(self, status: str) -> Handler:
        def decide(call: Call) -> bool:
            chat_id = self._require_chat(call)
            user_id = self._int(call, "user_id")
            if user_id in self.faults.no_join_request:
                raise bad_request("HIDE_REQUESTER_MISSING", "no_join_request")
            self.set_member(chat_id, user_id, status)
            return True

        return decide

    # --- invite links ----------------------------------------------------------------------------

    def create_chat_invite_link(self, call: Call) -> dict[str, Any]:
        chat_id = self._require_chat(call)
        params = call.params
        creates_join_request = bool(params.get("creates_join_request", False))
        if creates_join_request and params.get("member_limit"):
            raise bad_request("member limit can't be specified for links requiring administrator approval")
        link: dict[str, Any] = {
            "invite_link": f"https://t.me/+{secrets.token_urlsafe(12)}",
            "creator": {**self.me},
            "creates_join_request": creates_join_request,
            "is_primary": False,
            "is_revoked": False,
        }
        for name in ("name", "expire_date", "member_limit"):
            if params.get(name) is not None:
                link[name] = params[name]
        self.invite_links[link["invite_link"]] = {**link, "chat_id": chat_id}
        return link

    def revoke_chat_invite_link(self, call: Call) -> dict[str, Any]:
        self._require_chat(call)
        url = call.params.get("invite_link")
        if not url:
            raise bad_request("invite_link is empty")
        stored = self.invite_links.get(str(url))
        if stored is None:
            raise bad_request("INVITE_HASH_EXPIRED")
        stored["is_revoked"] = True
        return {k: v for k, v in stored.items() if k != "chat_id"}
