"""The VIP subscription lifecycle end to end: ticks and events in over real Kafka, effects in
PostgreSQL and in the Bot API double (reminders, expiry and removal, access, archiving)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.services import Services
from consumers.subscriptions import subscriptions_remove_expired_member_task
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import (
    SubscriptionExpired,
    SubscriptionExpiring,
    SubscriptionRenewed,
    SubscriptionStarted,
)
from dianabot_core.clock import SystemClock
from dianabot_core.models import (
    Channel,
    ChannelKind,
    Subscription,
    SubscriptionStatus,
    User,
    UserState,
    VipInviteLink,
)
from dianabot_core.pipeline.errors import PermanentError
from dianabot_core.pipeline.handlers import HandlerContext
from dianabot_core.telegram.templates import render
from tests.integration.test_telegram_support import ChatUser, create_users, wait_for
from tests.integration.test_vip_support import (
    ARCHIVE,
    DAY,
    EXPIRY,
    HOUR,
    MADRID,
    REMINDERS,
    RENEW_URL,
    Vip,
    era,
    settle,
    vip_stack,
)


@pytest.fixture(scope="module")
async def vip(
    kafka: object, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Vip]:
    async with vip_stack(admin, session_factory) as stack:
        yield stack


@pytest.fixture(autouse=True)
async def _fresh(vip: Vip) -> AsyncIterator[None]:
    vip.double.set_faults(clear=True)
    yield
    await vip.clean_up()


def reminder(kind: str, end_at: datetime) -> str | None:
    params = {"end_date": end_at.astimezone(MADRID).date().isoformat(), "renew_url": RENEW_URL}
    return render(f"subscription.reminder_{kind}", params, "es").text


FAREWELL = render("subscription.expired_farewell", {"renew_url": RENEW_URL}, "es").text


# --- reminders -----------------------------------------------------------------------------------


async def test_reminders_go_out_once_per_window_and_never_for_lifetime_plans(vip: Vip) -> None:
    now = era()
    week, day, lifetime = await vip.new_users(3)
    week_end, day_end = now + 6 * DAY, now + 12 * HOUR
    week_sub = await vip.subscribe(week, week_end)
    await vip.subscribe(day, day_end)
    await vip.subscribe(lifetime, None, start_at=now - DAY)

    assert (await vip.run_job(REMINDERS, now))["reminders_emitted"] == 2
    await wait_for(lambda: vip.texts(week) and vip.texts(day))
    # The job runs again at the same slot and an hour later, and the first tick is redelivered:
    # every reminder of these windows is already marked sent.
    assert (await vip.run_job(REMINDERS, now))["reminders_emitted"] == 0
    assert (await vip.run_job(REMINDERS, now + HOUR))["reminders_emitted"] == 0
    # A day before the end of the first subscription, its 1-day reminder is due (the other ended).
    assert (await vip.run_job(REMINDERS, week_end - 23 * HOUR))["reminders_emitted"] == 1
    await wait_for(lambda: len(vip.texts(week)) == 2)
    await settle()

    assert vip.texts(week) == [reminder("7d", week_end), reminder("1d", week_end)]
    assert vip.texts(day) == [reminder("1d", day_end)]
    assert vip.texts(lifetime) == []
    assert vip.buttons(week)[0] == [{"text": "Renovar", "url": RENEW_URL}]
    sent = (await vip.subscription(week_sub)).reminders_sent
    assert set(sent) == {"7d", "1d"}


async def test_a_renewed_subscription_gets_the_next_cycles_reminders_not_stale_ones(vip: Vip) -> None:
    now = era()
    [user] = await vip.new_users(1)
    first_end = now + 6 * DAY
    sub = await vip.subscribe(user, first_end)
    await vip.run_job(REMINDERS, now)
    await wait_for(lambda: vip.texts(user))

    second_end = first_end + 30 * DAY
    async with vip.sessions() as session, session.begin():
        await session.execute(update(Subscription).where(Subscription.id == sub).values(end_at=second_end))
    # A reminder of the old cycle, emitted before the renewal, arrives after it: it is dropped.
    stale = await vip.publish(
        SubscriptionExpiring(user_id=user.id, subscription_id=sub, end_at=first_end, reminder="1d")
    )
    await vip.wait_handled(vip.handler_name("send_expiry_reminder"), stale.event_id)
    assert (await vip.run_job(REMINDERS, first_end - 20 * HOUR))["reminders_emitted"] == 0
    assert (await vip.run_job(REMINDERS, second_end - 6 * DAY))["reminders_emitted"] == 1
    await wait_for(lambda: len(vip.texts(user)) == 2)
    await settle()

    assert vip.texts(user) == [reminder("7d", first_end), reminder("7d", second_end)]


# --- expiry --------------------------------------------------------------------------------------


async def test_expiry_removes_the_member_sets_them_free_and_says_goodbye(vip: Vip) -> None:
    now = era()
    member, absent, renewing = await vip.new_users(3, state=UserState.VIP)
    member_sub = await vip.subscribe(member, now - HOUR)
    absent_sub = await vip.subscribe(absent, now - 2 * HOUR)
    # Expired by an earlier run; the user renewed (a new subscription) before its event was handled.
    renewed_sub = await vip.subscribe(renewing, now - HOUR, status=SubscriptionStatus.EXPIRED)
    await vip.subscribe(renewing, now + 30 * DAY, start_at=now)
    vip.double.set_faults(not_members=[absent.chat_id])

    assert (await vip.run_job(EXPIRY, now))["subscriptions_expired"] == 2
    late = await vip.publish(
        SubscriptionExpired(user_id=renewing.id, subscription_id=renewed_sub, end_at=now)
    )
    await wait_for(lambda: vip.texts(member) and vip.texts(absent))
    await vip.wait_handled(vip.handler_name("remove_expired_member"), late.event_id)
    await settle()

    for user, sub in ((member, member_sub), (absent, absent_sub)):
        subscription = await vip.subscription(sub)
        assert subscription.status is SubscriptionStatus.EXPIRED
        assert subscription.kicked_from_channel_at is not None
        assert (await vip.user(user.id)).state is UserState.FREE
        assert vip.texts(user) == [FAREWELL]
        assert vip.buttons(user) == [[{"text": "Volver al VIP", "url": RENEW_URL}]]
    assert vip.member_calls("banChatMember", member) == [200]
    assert vip.member_status(member) == "kicked"
    assert vip.member_calls("banChatMember", absent) == [400]  # "not a member" counts as done
    # The renewing user stays in the channel, VIP, and hears nothing.
    assert vip.member_calls("banChatMember", renewing) == []
    assert (await vip.subscription(renewed_sub)).kicked_from_channel_at is None
    assert (await vip.user(renewing.id)).state is UserState.VIP
    assert vip.texts(renewing) == []


async def test_a_failed_kick_is_retried_by_the_pipeline_until_it_succeeds(vip: Vip) -> None:
    now = era()
    [user] = await vip.new_users(1, state=UserState.VIP)
    sub = await vip.subscribe(user, now - HOUR)
    vip.double.set_faults(server_errors={"count": 2, "status": 502, "methods": ["banChatMember"]})

    await vip.run_job(EXPIRY, now)
    await wait_for(lambda: vip.texts(user), within=30)
    await settle()

    assert vip.member_calls("banChatMember", user) == [502, 502, 200]
    bans = [r for r in vip.double.requests_for("banChatMember", chat_id=vip.vip_chat_id)]
    assert bans[-1].received_at - bans[0].received_at >= 1.0  # from the retry topics, not at once
    subscription = await vip.subscription(sub)
    assert subscription.kicked_from_channel_at is not None
    assert (await vip.user(user.id)).state is UserState.FREE
    assert vip.texts(user) == [FAREWELL]


async def test_without_a_vip_channel_the_removal_fails_permanently_with_the_reason(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    [user] = await create_users(session_factory, 1, state=UserState.VIP)
    now = datetime.now(UTC)
    async with session_factory() as session:
        try:
            sub = Subscription(
                user_id=user.id,
                plan="monthly",
                status=SubscriptionStatus.EXPIRED,
                start_at=now - 31 * DAY,
                end_at=now - DAY,
            )
            session.add(sub)
            await session.execute(delete(Channel).where(Channel.kind == ChannelKind.VIP))
            await session.flush()
            event = SubscriptionExpired(user_id=user.id, subscription_id=sub.id, end_at=now - DAY)

            async def no_emit(*args: object, **kwargs: object) -> EventEnvelope:
                raise AssertionError("nothing is emitted")

            ctx = HandlerContext(
                session=session,
                envelope=EventEnvelope.wrap(event, producer="test"),
                clock=SystemClock(),
                emit=no_emit,
                services=Services(),
            )
            with pytest.raises(PermanentError, match="no VIP channel configured"):
                await subscriptions_remove_expired_member_task(event, ctx)
        finally:
            await session.rollback()
    async with session_factory() as session, session.begin():
        await session.execute(delete(User).where(User.id == user.id))


# --- start and renewal ---------------------------------------------------------------------------


def invite_links(vip: Vip, user: ChatUser) -> list[str]:
    return [b["url"] for message in vip.buttons(user) for b in message if "t.me/+" in b.get("url", "")]


async def test_a_new_subscriber_gets_one_invite_link_even_when_the_event_is_delivered_again(
    vip: Vip,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    [user] = await vip.new_users(1)
    vip.double.set_member(vip.vip_chat_id, user.chat_id, "left")
    sub = await vip.subscribe(user, now + 30 * DAY, start_at=now)
    started = SubscriptionStarted(
        user_id=user.id, subscription_id=sub, plan="monthly", start_at=now, end_at=now + 30 * DAY
    )
    envelope = EventEnvelope.wrap(started, producer="test")
    # Delivered twice to this consumer, and once to a second consumer with a ledger of its own.
    for _ in range(2):
        await vip.producer.send_event(vip.topics.subscriptions.name, envelope)
    await vip.wait_handled(vip.handler_name("grant_access"), envelope.event_id)
    await vip.wait_handled(vip.handler_name("grant_access", "d"), envelope.event_id)
    await vip.producer.send_event(vip.topics.subscriptions.name, envelope)
    await settle()

    [link] = invite_links(vip, user)
    assert len(vip.texts(user)) == 1
    [created] = [r for r in vip.double.requests_for("createChatInviteLink") if r.status == 200]
    assert int(created.params["member_limit"]) == 1
    assert int(created.params["chat_id"]) == vip.vip_chat_id
    expires = int(created.params["expire_date"]) - created.received_at
    assert 29 * 60 < expires <= 30 * 60
    stored = vip.double.api.invite_links[link]
    assert int(stored["member_limit"]) == 1
    assert (await vip.user(user.id)).state is UserState.VIP
    # Recorded once, with the grant, as the link the user was sent.
    async with vip.sessions() as session:
        [recorded] = (
            await session.scalars(select(VipInviteLink).where(VipInviteLink.user_id == user.id))
        ).all()
    assert (recorded.invite_link, recorded.subscription_id) == (link, sub)
    assert int(recorded.expires_at.timestamp()) == int(created.params["expire_date"])
    assert recorded.name == f"subscription {sub}"
    assert recorded.revoked_at is None


async def test_a_renewal_unbans_a_removed_member_and_invites_them_but_not_a_current_member(
    vip: Vip,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    removed, current = await vip.new_users(2)
    vip.double.set_member(vip.vip_chat_id, removed.chat_id, "kicked")
    removed_sub = await vip.subscribe(removed, now + 30 * DAY, start_at=now)
    current_sub = await vip.subscribe(current, now + 60 * DAY, start_at=now - 30 * DAY)
    renewals = [
        await vip.publish(
            SubscriptionRenewed(user_id=user.id, subscription_id=sub, plan="monthly", end_at=end_at)
        )
        for user, sub, end_at in (
            (removed, removed_sub, now + 30 * DAY),
            (current, current_sub, now + 60 * DAY),
        )
    ]
    await vip.wait_handled(vip.handler_name("grant_access"), *(e.event_id for e in renewals))
    await settle()

    assert vip.member_calls("unbanChatMember", removed) == [200]
    assert vip.member_status(removed) == "left"  # may join again, with the link
    assert len(invite_links(vip, removed)) == 1
    assert vip.member_calls("unbanChatMember", current) == []
    assert vip.texts(current) == []
    for user in (removed, current):
        assert (await vip.user(user.id)).state is UserState.VIP


# --- archive -------------------------------------------------------------------------------------


async def test_expired_subscriptions_are_archived_after_thirty_days_in_batches(vip: Vip) -> None:
    now = era()
    users = await vip.new_users(6)
    ends = [now - 40 * DAY, now - 35 * DAY, now - 31 * DAY, now - 30 * DAY - HOUR, now - 29 * DAY]
    old = [
        await vip.subscribe(u, end, status=SubscriptionStatus.EXPIRED)
        for u, end in zip(users, ends, strict=False)
    ]
    active = await vip.subscribe(users[5], now - 40 * DAY)  # never expired: not archived

    counts = await vip.run_job(ARCHIVE, now)

    assert counts["subscriptions_archived"] >= 4  # batches of 2 (other tests' old rows may join)
    archived = {sub: (await vip.subscription(sub)).archived_at for sub in [*old, active]}
    assert all(archived[sub] == now for sub in old[:4])
    assert archived[old[4]] is None
    assert archived[active] is None
    assert (await vip.run_job(ARCHIVE, now + HOUR))["subscriptions_archived"] == 0
