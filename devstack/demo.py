"""``python -m devstack.demo``: watch the VIP lifecycle happen against ``make run`` and the Bot API double.

Run ``make run`` in one terminal and this in another. It

1. finds the Bot API double at ``DIANABOT_TELEGRAM__API_BASE_URL`` or, if none answers, serves one
   there itself (in this process, until it exits);
2. replaces its own demo data (Telegram ids 700000001-700000005, a free channel) with fresh rows,
   using the database's VIP channel (one is created if there is none): a subscription ending in
   6 days (7-day reminder), one ending in 20 hours (1-day reminder), one that ended 5 minutes ago
   (removal and farewell), a lifetime one (nothing), a new subscriber (``subscription.started``:
   an invite link), and three posts due now (one of them daily);
3. queues, in the same transaction, manual ticks of the reminder and expiry jobs, so nobody waits
   for the hour; once the consumers have recorded the posts, it ticks the publishing job too;
4. prints what the double receives, as it happens, until everything expected arrived (or
   ``--follow`` seconds passed). The consumers' log shows the same story from their side.

Everything goes through the outbox, as a bot service would publish it: the consumers' relay sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.events import (
    Button,
    Media,
    MessageContent,
    PostScheduled,
    SchedulerTick,
    SubscriptionStarted,
)
from dianabot_contracts.ids import uuid7
from dianabot_contracts.topics import SCHEDULER_TICKS
from dianabot_core.models import (
    Channel,
    ChannelKind,
    ChannelPost,
    Subscription,
    SubscriptionPlan,
    User,
    UserState,
)
from dianabot_core.outbox import add_to_outbox
from dianabot_core.runtime import build_resources, settings_or_exit
from dianabot_double import TelegramDouble

PRODUCER = "dianabot-demo"
VIP_CHANNEL = -1_001_000_000_001
FREE_CHANNEL = -1_001_000_000_002
DAY = timedelta(days=1)


@dataclass(frozen=True)
class DemoUser:
    telegram_id: int
    username: str
    language: str
    role: str  # what happens to them, printed next to what the double receives


USERS = (
    DemoUser(700_000_001, "ana", "es", "7-day reminder"),
    DemoUser(700_000_002, "ben", "en", "1-day reminder"),
    DemoUser(700_000_003, "carla", "es", "expired: removed from the VIP channel, farewell"),
    DemoUser(700_000_004, "dario", "es", "lifetime: nothing"),
    DemoUser(700_000_005, "eve", "en", "new subscriber: invite link"),
)
EXPECTED = {"messages": 7, "bans": 1}  # 2 reminders, a farewell, an invite link, 3 posts
MEMBER_CALLS = ("banChatMember", "unbanChatMember", "getChatMember", "createChatInviteLink")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--follow", type=float, default=180, help="seconds to watch the double (0: don't)")
    return parser.parse_args(argv)


# --- the double ----------------------------------------------------------------------------------


async def double_answers(base_url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base_url}/_double/health", timeout=aiohttp.ClientTimeout(total=2)) as answer,
        ):
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@contextlib.asynccontextmanager
async def double_at(base_url: str) -> AsyncIterator[str]:
    """The double's control URL: the running one, or one served here for as long as the demo runs."""
    if await double_answers(base_url):
        print(f"using the Bot API double at {base_url}")
        yield base_url
        return
    address = urlsplit(base_url)
    double = TelegramDouble()
    url = await double.start(address.hostname or "127.0.0.1", address.port or 8081)
    print(f"no Bot API double answered at {base_url}: serving one at {url} until the demo ends")
    try:
        yield url
    finally:
        await double.stop()


async def set_members(http: aiohttp.ClientSession, url: str, vip_channel: int) -> None:
    """Carla is in the VIP channel (to be removed); Eve is not yet (she gets a link)."""
    for user, status in ((USERS[2], "member"), (USERS[4], "left")):
        body = {"chat_id": vip_channel, "user_id": user.telegram_id, "status": status}
        async with http.post(f"{url}/_double/members", json=body) as answer:
            answer.raise_for_status()


# --- seed data -----------------------------------------------------------------------------------


async def vip_channel(session: AsyncSession) -> int:
    """The VIP channel the handlers use (the first of kind vip), created if there is none."""
    found = await session.scalar(
        select(Channel.telegram_chat_id).where(Channel.kind == ChannelKind.VIP).order_by(Channel.id).limit(1)
    )
    if found is not None:
        return found
    await session.execute(
        insert(Channel).values(telegram_chat_id=VIP_CHANNEL, kind=ChannelKind.VIP, title="Diana VIP (demo)")
    )
    return VIP_CHANNEL


async def replace_demo_data(session: AsyncSession, now: datetime, vip: int) -> list[PostScheduled]:
    """Delete the previous run's demo rows, insert fresh ones, queue the events; returns the posts."""
    await session.execute(delete(User).where(User.telegram_id.in_([u.telegram_id for u in USERS])))
    await session.execute(delete(Channel).where(Channel.telegram_chat_id == FREE_CHANNEL))
    await session.execute(
        insert(Channel).values(telegram_chat_id=FREE_CHANNEL, kind=ChannelKind.FREE, title="Diana (demo)")
    )
    user_ids = []
    for user in USERS:
        state = UserState.FREE if user is USERS[4] else UserState.VIP
        row = insert(User).values(
            telegram_id=user.telegram_id, username=user.username, language_code=user.language, state=state
        )
        user_ids.append((await session.execute(row.returning(User.id))).scalar_one())
    ends = (now + 6 * DAY, now + timedelta(hours=20), now - timedelta(minutes=5), None, now + 30 * DAY)
    for user_id, end_at in zip(user_ids, ends, strict=True):
        start_at = now if end_at is not None and end_at > now + 7 * DAY else (end_at or now) - 30 * DAY
        plan = SubscriptionPlan.LIFETIME if end_at is None else SubscriptionPlan.MONTHLY
        subscription = insert(Subscription).values(
            user_id=user_id, plan=plan, start_at=start_at, end_at=end_at
        )
        subscription_id = (await session.execute(subscription.returning(Subscription.id))).scalar_one()
        if user_id == user_ids[4]:
            started = SubscriptionStarted(
                user_id=user_id,
                subscription_id=subscription_id,
                plan="monthly",
                start_at=start_at,
                end_at=end_at,
            )
            await add_to_outbox(session, started, producer=PRODUCER)
    posts = demo_posts(now, vip)
    for post in posts:
        await add_to_outbox(session, post, producer=PRODUCER)
    for job in ("scheduled_hourly_subscription_expiry_reminders", "scheduled_hourly_subscription_expiry"):
        await add_to_outbox(session, SchedulerTick(job=job, slot=now, kind="manual"), producer=PRODUCER)
    return posts


def demo_posts(now: datetime, vip: int) -> list[PostScheduled]:
    run = now.strftime("%Y%m%dT%H%M%S")
    due = now - timedelta(minutes=1)
    return [
        PostScheduled(
            post_id=f"demo-{run}-chapter",
            channel_chat_id=FREE_CHANNEL,
            post_type="narrative",
            content=MessageContent(text="Capítulo 1: Diana abre la puerta del jardín."),
            scheduled_for=due,
        ),
        PostScheduled(
            post_id=f"demo-{run}-vip-photo",
            channel_chat_id=vip,
            post_type="announcement",
            content=MessageContent(
                text="Solo para VIP: la sesión de hoy.",
                media=(Media(kind="photo", file="https://example.com/diana-vip.jpg"),),
                buttons=((Button(text="Ver más", url="https://example.com/vip"),),),
                protect_content=True,
            ),
            scheduled_for=due,
        ),
        PostScheduled(
            post_id=f"demo-{run}-daily-trivia",
            channel_chat_id=FREE_CHANNEL,
            post_type="trivia",
            content=MessageContent(text="Trivia del día: ¿de qué color es la puerta del jardín?"),
            scheduled_for=due,
            recurrence="daily",
        ),
    ]


async def tick_publishing_when_recorded(
    session_factory: async_sessionmaker[AsyncSession], posts: list[PostScheduled]
) -> bool:
    """Once the consumers recorded the posts, tick the publishing job (rather than wait for the minute)."""
    ids = [p.post_id for p in posts]
    for _ in range(60):
        async with session_factory() as session:
            recorded = set(
                await session.scalars(select(ChannelPost.external_id).where(ChannelPost.external_id.in_(ids)))
            )
        if len(recorded) == len(ids):
            tick = SchedulerTick(
                job="scheduled_minutely_post_publishing", slot=datetime.now(UTC), kind="manual"
            )
            async with session_factory() as session, session.begin():
                await add_to_outbox(
                    session, tick, producer=PRODUCER, event_id=uuid7(), topic=SCHEDULER_TICKS.name
                )
            return True
        await asyncio.sleep(1)
    return False


# --- following the double ------------------------------------------------------------------------


@dataclass
class Watch:
    """What the demo looks for in the double's records, and what it has shown already."""

    vip: int
    seen_messages: set[tuple[int, int]]
    seen_requests: set[int]
    bans: int = 0

    def chat(self, chat_id: int) -> str:
        names = {self.vip: "VIP channel", FREE_CHANNEL: "free channel"}
        names |= {u.telegram_id: f"{u.username} ({u.role})" for u in USERS}
        return names.get(chat_id, str(chat_id))

    @property
    def chats(self) -> set[int]:
        return {self.vip, FREE_CHANNEL} | {u.telegram_id for u in USERS}

    @property
    def complete(self) -> bool:
        return len(self.seen_messages) >= EXPECTED["messages"] and self.bans >= EXPECTED["bans"]


async def records(http: aiohttp.ClientSession, url: str, kind: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/_double/{kind}") as answer:
        answer.raise_for_status()
        return list((await answer.json())[kind])


async def start_watching(http: aiohttp.ClientSession, url: str, vip: int) -> Watch:
    """Everything the double holds already (earlier demos) counts as shown."""
    messages = {(m["chat_id"], m["message_id"]) for m in await records(http, url, "messages")}
    requests = {r["seq"] for r in await records(http, url, "requests")}
    return Watch(vip, messages, requests)


def describe_message(message: dict[str, Any]) -> str:
    text = message.get("text") or message.get("caption") or f"[{message.get('media_type')}]"
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    buttons = [f"[{b['text']}]" for row in rows for b in row]
    return " ".join([f"{text[:90]}{'…' if len(text) > 90 else ''}", *buttons])


async def follow(http: aiohttp.ClientSession, url: str, watch: Watch, seconds: float) -> bool:
    """Print the demo's messages and member calls as the double receives them; True once all arrived."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not watch.complete and asyncio.get_running_loop().time() < deadline:
        for message in await records(http, url, "messages"):
            key = (message["chat_id"], message["message_id"])
            if message["chat_id"] in watch.chats and key not in watch.seen_messages:
                watch.seen_messages.add(key)
                print(f"  message to {watch.chat(message['chat_id'])}: {describe_message(message)}")
        for request in await records(http, url, "requests"):
            if request["seq"] in watch.seen_requests or request["method"] not in MEMBER_CALLS:
                continue
            watch.seen_requests.add(request["seq"])
            user_id = int(request["params"].get("user_id", 0))
            if request.get("chat_id") == watch.vip and (user_id in watch.chats or not user_id):
                who = f" for {watch.chat(user_id)}" if user_id else ""
                print(f"  {request['method']} in the VIP channel{who}: HTTP {request['status']}")
                watch.bans += request["method"] == "banChatMember" and request["status"] == 200
        await asyncio.sleep(1)
    return watch.complete


async def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    resources = build_resources(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        async with double_at(settings.telegram.api_base_url) as url, aiohttp.ClientSession() as http:
            async with resources.session_factory() as session, session.begin():
                vip = await vip_channel(session)
                await set_members(http, url, vip)
                watch = await start_watching(http, url, vip)
                posts = await replace_demo_data(session, now, vip)
            print("demo data created; events and ticks queued in the outbox:")
            for user in USERS:
                print(f"  {user.username:<6} {user.role}")
            print("  posts: a chapter and a daily trivia in the free channel, a photo in the VIP channel")
            if not await tick_publishing_when_recorded(resources.session_factory, posts):
                print(
                    "the consumers did not record the posts within 60 s: is `make run` running?",
                    file=sys.stderr,
                )
                return 1
            print("posts recorded by the consumers; publishing job ticked. What the double receives:")
            if not args.follow:
                return 0
            if not await follow(http, url, watch, args.follow):
                print(
                    f"not everything arrived within {args.follow:.0f} s: see the consumers' log",
                    file=sys.stderr,
                )
                return 1
            print("demo complete: reminders, a removal, an invite link and the posts all went out")
    finally:
        await resources.engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
