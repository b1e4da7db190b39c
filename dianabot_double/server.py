"""A local Telegram Bot API double: aiogram talks to it as to api.telegram.org.

`TelegramDouble` serves `/bot{token}/{method}` with Telegram's answers, enforces Telegram's send limits
(429 + retry_after), injects faults on demand and records every request and delivered message.
The control API lives under `/_double/`; tests in the same event loop can use the Python attributes.

The token is only ever compared, never stored in a record, a log line or an error: the access log is
off because aiohttp's would print the request path, token included.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from dianabot_double.api import ApiError, BotApi, Call, bad_request
from dianabot_double.faults import SEND_METHODS, Faults
from dianabot_double.limits import Kind, RateLimit, RateLimiter, Scope
from dianabot_double.records import MessageRecord, RequestRecord
from dianabot_double.requests import read_params

log = logging.getLogger("dianabot_double")

GLOBAL_LIMIT = RateLimit(30, 1.0)
PRIVATE_CHAT_LIMIT = RateLimit(1, 1.0)
GROUP_LIMIT = RateLimit(20, 60.0)
DEFAULT_BOT_ID = 1000000001


class _LimitsPatch(BaseModel):
    """Only the fields given change; `null` disables that limit."""

    model_config = ConfigDict(extra="forbid")

    global_limit: RateLimit | None = None
    private_chat_limit: RateLimit | None = None
    group_limit: RateLimit | None = None
    enforce_retry_after: bool = True


class _MemberPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chat_id: int
    user_id: int
    status: str
    until_date: int = 0


def _message_ids(result: Any) -> list[int]:
    items = result if isinstance(result, list) else [result]
    return [item["message_id"] for item in items if isinstance(item, dict) and "message_id" in item]


def _control_error(description: str) -> web.Response:
    return web.json_response({"ok": False, "description": description}, status=400)


class TelegramDouble:
    """The Bot API double; one instance stands in for one bot.

    Limits are `RateLimit(count, window_s)` or None to disable one.  `clock` (monotonic seconds) drives
    the limits and `wall_clock` (Unix time) the message dates, so tests can inject a fake clock.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        global_limit: RateLimit | None = GLOBAL_LIMIT,
        private_chat_limit: RateLimit | None = PRIVATE_CHAT_LIMIT,
        group_limit: RateLimit | None = GROUP_LIMIT,
        enforce_retry_after: bool = True,
        rate_limited_methods: Iterable[str] = SEND_METHODS,
        bot_username: str = "dianabot_double",
        chat_types: Mapping[int, str] | None = None,
        default_member_status: str = "member",
        max_request_records: int | None = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = token
        self._clock = clock
        self._wall_clock = wall_clock
        self.rate_limited_methods = frozenset(rate_limited_methods)
        self.faults = Faults()
        self.limiter = RateLimiter(
            global_limit=global_limit,
            private_chat_limit=private_chat_limit,
            group_limit=group_limit,
            enforce_retry_after=enforce_retry_after,
        )
        known_id = (token or "").partition(":")[0]
        self.api = BotApi(
            bot_id=int(known_id) if known_id.isdigit() else DEFAULT_BOT_ID,
            bot_username=bot_username,
            faults=self.faults,
            chat_types=dict(chat_types or {}),
            default_member_status=default_member_status,
        )
        self._max_records = max_request_records
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._started = time.monotonic()
        self.app = self._build_app()
        self.reset()

    # --- Python API ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every request, message, member, link, fault, counter and announced retry_after."""
        self.requests: deque[RequestRecord] = deque(maxlen=self._max_records)
        self._seq = itertools.count(1)
        self._by_method: dict[str, Counter[str]] = {}
        self._by_status: Counter[int] = Counter()
        self.faults.apply({"clear": True})
        self.limiter.reset()
        self.api.reset()

    @property
    def messages(self) -> list[MessageRecord]:
        return self.api.messages

    def messages_for(self, chat_id: int) -> list[MessageRecord]:
        return [m for m in self.api.messages if m.chat_id == chat_id]

    def requests_for(self, method: str | None = None, chat_id: int | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (chat_id is None or r.chat_id == chat_id)
        ]

    def set_faults(self, **faults: Any) -> None:
        """Same payload as `POST /_double/faults`, e.g. `set_faults(blocked={42}, storm={"count": 2})`."""
        self.faults.apply(faults)

    def set_member(self, chat_id: int, user_id: int, status: str, until_date: int = 0) -> None:
        self.api.set_member(chat_id, user_id, status, until_date)

    def configure(
        self,
        *,
        global_limit: RateLimit | None,
        private_chat_limit: RateLimit | None,
        group_limit: RateLimit | None,
        enforce_retry_after: bool = True,
    ) -> None:
        """Replace every limit at once (None disables one); windows restart empty."""
        self.limiter.configure(
            global_limit=global_limit,
            private_chat_limit=private_chat_limit,
            group_limit=group_limit,
            enforce_retry_after=enforce_retry_after,
        )

    @property
    def violations(self) -> dict[Kind, int]:
        return dict(self.limiter.violations)

    def stats(self) -> dict[str, Any]:
        by_outcome: Counter[str] = Counter()
        for outcomes in self._by_method.values():
            by_outcome.update(outcomes)
        return {
            "requests_total": sum(by_outcome.values()),
            "delivered": len(self.api.messages),
            "by_method": {m: dict(c) for m, c in sorted(self._by_method.items())},
            "by_outcome": dict(by_outcome),
            "by_status": {str(s): n for s, n in sorted(self._by_status.items())},
            **self.limiter.counters_json(),
            "limits": self.limiter.limits_json(),
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port); returns the base URL for TelegramAPIServer.from_base."""
        # No access log: aiohttp's prints the path, and the path holds the token.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TelegramDouble:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the Bot API -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=60 * 1024 * 1024)  # Telegram takes uploads up to 50 MB
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/_double/health", self._health)
        app.router.add_get("/_double/requests", self._get_requests)
        app.router.add_get("/_double/messages", self._get_messages)
        app.router.add_get("/_double/stats", self._get_stats)
        app.router.add_post("/_double/reset", self._post_reset)
        app.router.add_get("/_double/faults", self._get_faults)
        app.router.add_post("/_double/faults", self._post_faults)
        app.router.add_post("/_double/members", self._post_member)
        app.router.add_get("/_double/config", self._get_config)
        app.router.add_post("/_double/config", self._post_config)
        return app

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        now, wall = self._clock(), self._wall_clock()
        token = request.match_info["token"]
        name = request.match_info["method"]
        parse_error: ApiError | None = None
        try:
            params, files, encoding = await read_params(request)
        except ApiError as error:
            params, files, encoding, parse_error = {}, {}, "invalid", error
        record = RequestRecord(
            seq=next(self._seq),
            method=self.api.canonical(name) or name,
            chat_id=params.get("chat_id"),
            params=params,
            files=files,
            encoding=encoding,
            received_at=wall,
            monotonic=now,
        )
        self.requests.append(record)
        response = self._answer(record, token, parse_error, now)
        if record.delay:
            await asyncio.sleep(record.delay)
        return response

    def _answer(
        self, record: RequestRecord, token: str, parse_error: ApiError | None, now: float
    ) -> web.Response:
        try:
            result = self._decide(record, token, parse_error, now)
        except ApiError as error:
            return self._finish(record, error.status, error.body(), error)
        except Exception:
            # Never echo the exception to the client or the token to the log; the traceback has neither.
            log.exception("double failed on %s", record.method)
            failure = ApiError(500, "Internal Server Error: the double failed", "double_error")
            return self._finish(record, 500, failure.body(), failure)
        record.message_ids = _message_ids(result)
        return self._finish(record, 200, {"ok": True, "result": result}, None)

    def _authorize(self, token: str) -> None:
        if self._token is not None and not hmac.compare_digest(token.encode(), self._token.encode()):
            raise ApiError(401, "Unauthorized", "unauthorized")
        bot_id = token.partition(":")[0]
        if bot_id.isdigit():
            self.api.bot_id = int(bot_id)  # getMe answers the caller's id, as aiogram's Bot.id expects

    def _decide(self, record: RequestRecord, token: str, parse_error: ApiError | None, now: float) -> Any:
        self._authorize(token)
        handler = self.api.handlers.get(record.method)
        if handler is None:
            raise ApiError(404, "Not Found: method not found", "unknown_method")
        if parse_error is not None:
            raise parse_error
        record.delay = self.faults.take_slow(record.method)
        chat_id = self.api.resolve_chat(record.params.get("chat_id"))
        limited = chat_id is not None and record.method in self.rate_limited_methods
        if chat_id is not None and limited:
            self.limiter.note_arrival(chat_id, now)
        self._server_faults(record.method, chat_id, now)
        if chat_id is not None:
            self._chat_faults(chat_id)
        if chat_id is not None and limited and (rejection := self.limiter.admit(chat_id, now)):
            raise _too_many(rejection.retry_after, "rate_limited")
        call = Call(record.method, record.params, record.files, chat_id, now, self._wall_clock())
        result = handler(call)
        if chat_id is not None and limited:
            self.limiter.delivered(chat_id, now)
        return result

    def _server_faults(self, method: str, chat_id: int | None, now: float) -> None:
        storm = self.faults.take_storm(method)
        if storm is not None:
            scope: Scope = chat_id if storm.scope == "chat" and chat_id is not None else "global"
            self.limiter.announce(scope, now, storm.retry_after)
            raise _too_many(storm.retry_after, "storm")
        errors = self.faults.take_server_error(method)
        if errors is not None:
            outcome = "server_error_html" if errors.html else "server_error"
            raise ApiError(errors.status, HTTPStatus(errors.status).phrase, outcome)

    def _chat_faults(self, chat_id: int) -> None:
        faults = self.faults
        if chat_id in faults.blocked:
            raise ApiError(403, _forbidden(self.api.chat_type(chat_id)), "blocked")
        if chat_id in faults.chat_not_found:
            raise bad_request("chat not found", "chat_not_found")
        if chat_id in faults.migrated:
            error = bad_request("group chat was upgraded to a supergroup chat", "migrated")
            error.parameters = {"migrate_to_chat_id": faults.migrated[chat_id]}
            raise error

    def _finish(
        self, record: RequestRecord, status: int, body: dict[str, Any], error: ApiError | None
    ) -> web.Response:
        record.status = status
        record.outcome = "ok" if error is None else error.outcome
        if error is not None:
            record.description = error.description
            record.retry_after = error.retry_after
        self._by_method.setdefault(record.method, Counter())[record.outcome] += 1
        self._by_status[status] += 1
        log.debug("%s chat=%s -> %d %s", record.method, record.chat_id, status, record.outcome)
        if record.outcome == "server_error_html":
            return web.Response(status=status, text=_nginx_page(status), content_type="text/html")
        return web.json_response(body, status=status)

    # --- the control API -------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "uptime_s": round(time.monotonic() - self._started, 3)})

    async def _get_requests(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        chat = request.query.get("chat_id")
        records = [
            r.to_json()
            for r in self.requests
            if (method is None or r.method == method) and (chat is None or str(r.chat_id) == chat)
        ]
        return web.json_response({"requests": records})

    async def _get_messages(self, request: web.Request) -> web.Response:
        chat = request.query.get("chat_id")
        records = [m.to_json() for m in self.api.messages if chat is None or str(m.chat_id) == chat]
        return web.json_response({"messages": records})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.apply(await _json_object(request))
        except (ValueError, ValidationError) as error:
            return _control_error(str(error))
        return web.json_response(self.faults.to_json())

    async def _post_member(self, request: web.Request) -> web.Response:
        try:
            patch = _MemberPatch.model_validate(await _json_object(request))
            self.set_member(patch.chat_id, patch.user_id, patch.status, patch.until_date)
        except (ValueError, ValidationError) as error:
            return _control_error(str(error))
        return web.json_response({"ok": True})

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.limiter.limits_json())

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            patch = _LimitsPatch.model_validate(await _json_object(request))
        except (ValueError, ValidationError) as error:
            return _control_error(str(error))
        limiter, given = self.limiter, patch.model_fields_set
        self.configure(
            global_limit=patch.global_limit if "global_limit" in given else limiter.global_limit,
            private_chat_limit=(
                patch.private_chat_limit if "private_chat_limit" in given else limiter.private_chat_limit
            ),
            group_limit=patch.group_limit if "group_limit" in given else limiter.group_limit,
            enforce_retry_after=(
                patch.enforce_retry_after if "enforce_retry_after" in given else limiter.enforce_retry_after
            ),
        )
        return web.json_response(self.limiter.limits_json())


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("a JSON object is expected")
    return body


def _too_many(retry_after: int, outcome: str) -> ApiError:
    return ApiError(
        429, f"Too Many Requests: retry after {retry_after}", outcome, {"retry_after": retry_after}
    )


def _forbidden(chat_type: str) -> str:
    if chat_type == "private":
        return "Forbidden: bot was blocked by the user"
    if chat_type == "channel":
        return "Forbidden: bot is not a member of the channel chat"
    return f"Forbidden: bot was kicked from the {chat_type} chat"


def _nginx_page(status: int) -> str:
    title = f"{status} {HTTPStatus(status).phrase}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n"
    )
