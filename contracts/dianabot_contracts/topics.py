"""The topic registry: which topic each event type lands on, and how each topic is declared.

Topics are declared at start-up from this table (never auto-created with one partition).
Critical topics carry payment/subscription/alert traffic and have their own consumer groups,
so a bulk backlog (broadcasts, mission prompts) never delays them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dianabot_contracts.envelope import EventPayload
from dianabot_contracts.events import NotificationRequested, Priority

DAY_MS = 24 * 3600 * 1000


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    partitions: int = Field(ge=1)
    retention_ms: int = Field(7 * DAY_MS, ge=60_000)
    critical: bool = False
    key: str = Field(description="What the record key is; records with one key keep their order.")
    description: str = ""


SUBSCRIPTIONS = TopicSpec(
    name="dianabot.subscriptions",
    partitions=6,
    critical=True,
    key="user:{user_id}",
    description="VIP subscription lifecycle: started, renewed, expiring, expired, cancelled.",
)
CONTENT = TopicSpec(
    name="dianabot.content",
    partitions=3,
    key="post:{post_id}",
    description="Channel posts: scheduled, published, failed.",
)
NOTIFICATIONS_CRITICAL = TopicSpec(
    name="dianabot.notifications.critical",
    partitions=6,
    critical=True,
    key="user:{user_id}",
    description="Notifications that must not wait behind bulk traffic.",
)
NOTIFICATIONS_BULK = TopicSpec(
    name="dianabot.notifications.bulk",
    partitions=6,
    key="user:{user_id}",
    description="Mission prompts and other bulk notifications.",
)
BROADCASTS = TopicSpec(
    name="dianabot.broadcasts",
    partitions=3,
    key="broadcast:{broadcast_id}",
    description="Broadcast requests, fanned out into per-recipient sends.",
)
CHANNELS = TopicSpec(
    name="dianabot.channels",
    partitions=3,
    key="chat:{chat_id}:user:{telegram_user_id}",
    description="Channel membership: join requests.",
)
USERS = TopicSpec(
    name="dianabot.users", partitions=6, key="user:{user_id}", description="Registrations and activity."
)
GAMIFICATION = TopicSpec(
    name="dianabot.gamification",
    partitions=6,
    key="user:{user_id}",
    description="Missions assigned and completed, besitos earned and spent.",
)
ECONOMY = TopicSpec(
    name="dianabot.economy", partitions=1, key="economy", description="Economy checks' findings."
)
SCHEDULER_TICKS = TopicSpec(
    name="dianabot.scheduler.ticks",
    partitions=3,
    retention_ms=3 * DAY_MS,
    key="job:{job}",
    description="One tick per periodic job slot, emitted by the scheduler.",
)
JOBS = TopicSpec(
    name="dianabot.jobs", partitions=3, key="job:{job}", description="Job run results: completed, failed."
)
ALERTS = TopicSpec(
    name="dianabot.alerts",
    partitions=1,
    critical=True,
    retention_ms=30 * DAY_MS,
    key="alert:{alert_key}",
    description="Alerts raised and resolved; delivered to the admin chat.",
)
DEAD_LETTERS = TopicSpec(
    name="dianabot.dead_letters",
    partitions=3,
    retention_ms=30 * DAY_MS,
    key="the original record key",
    description="Records no handler could process, with the original bytes and the reason in headers.",
)

TOPICS: tuple[TopicSpec, ...] = (
    SUBSCRIPTIONS,
    CONTENT,
    NOTIFICATIONS_CRITICAL,
    NOTIFICATIONS_BULK,
    BROADCASTS,
    CHANNELS,
    USERS,
    GAMIFICATION,
    ECONOMY,
    SCHEDULER_TICKS,
    JOBS,
    ALERTS,
    DEAD_LETTERS,
)

ROUTES: dict[str, TopicSpec] = {
    "user.registered": USERS,
    "user.activity": USERS,
    "subscription.started": SUBSCRIPTIONS,
    "subscription.renewed": SUBSCRIPTIONS,
    "subscription.expiring": SUBSCRIPTIONS,
    "subscription.expired": SUBSCRIPTIONS,
    "subscription.cancelled": SUBSCRIPTIONS,
    "channel.join_requested": CHANNELS,
    "post.scheduled": CONTENT,
    "post.published": CONTENT,
    "post.failed": CONTENT,
    "notification.requested": NOTIFICATIONS_BULK,  # critical ones: see topic_for()
    "broadcast.requested": BROADCASTS,
    "gamification.mission_assigned": GAMIFICATION,
    "gamification.mission_completed": GAMIFICATION,
    "gamification.daily_gift_claimed": GAMIFICATION,
    "gamification.besitos_earned": GAMIFICATION,
    "gamification.besitos_spent": GAMIFICATION,
    "economy.drift_detected": ECONOMY,
    "scheduler.tick": SCHEDULER_TICKS,
    "job.completed": JOBS,
    "job.failed": JOBS,
    "alert.raised": ALERTS,
    "alert.resolved": ALERTS,
}


def topic_for(payload: EventPayload) -> TopicSpec:
    """The topic an event is published to; a critical notification takes the critical lane."""
    if isinstance(payload, NotificationRequested) and payload.priority is Priority.CRITICAL:
        return NOTIFICATIONS_CRITICAL
    return ROUTES[payload.event_type]
