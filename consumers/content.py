"""Channel content: recording scheduled posts, and publishing the due ones every minute.

* handler ``record_scheduled_post`` (group ``dianabot.content.record_scheduled_post``):
  ``post.scheduled`` creates or updates the post (published and cancelled posts are final);
* job ``scheduled_minutely_post_publishing``: claims due posts (``FOR UPDATE SKIP LOCKED``, so two
  publishers never take the same post), sends each to its channel, stores the message id, marks it
  published, emits ``post.published`` and creates a recurring post's next occurrence.

Each post is sent under the send-ledger key ``post:{id}``: a run that sent a post and then failed
before committing leaves the post scheduled, and the next run finds the send recorded and only
marks it published, so publishing twice never posts twice.

Failures, per post (one bad post never holds up the others):

* permanent (Telegram refused: bad request, the bot is not in the channel; unusable content; an
  outcome that is unknown and must not be resent): ``failed``, ``post.failed`` and an alert;
* transient (5xx, network, a rate-limit wait beyond one call's budget): the post stays scheduled
  and the next minute's run tries again — the job's schedule is the post's retry loop. A post still
  failing ``give_up_after`` (default 30 minutes) past its time is failed the same way, with an alert.
  Other posts of that channel wait for the next run too.

Errors of the database or the job itself fail the tick, which the pipeline retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Services
from dianabot_contracts.envelope import EventPayload
from dianabot_contracts.events import AlertRaised, MessageContent, PostScheduled, SchedulerTick
from dianabot_contracts.topics import ALERTS, CONTENT, TopicSpec
from dianabot_core.domain.content import (
    claim_due_posts,
    mark_failed,
    mark_published,
    schedule_next_occurrence,
    upsert_scheduled_post,
)
from dianabot_core.domain.settings import ContentSettings
from dianabot_core.models import Channel, ChannelPost
from dianabot_core.pipeline.errors import PermanentError, TransientError, describe
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.telegram.sender import SendRequest, TelegramSender

logger = logging.getLogger("dianabot.content")


@dataclass(frozen=True)
class Routes:
    """Where the job's events go: the registry's topics, or a test's own."""

    content: TopicSpec = CONTENT
    alerts: TopicSpec = ALERTS

    async def emit(self, ctx: HandlerContext[Services], payload: EventPayload, topic: TopicSpec) -> None:
        await ctx.emit(payload, topic=topic)


# --- handler -------------------------------------------------------------------------------------


async def content_record_scheduled_post_task(event: PostScheduled, ctx: HandlerContext[Services]) -> None:
    """Create or update the post; a published or cancelled post stays as it is."""
    post = await upsert_scheduled_post(ctx.session, event)
    logger.info(
        "post %s is %s for %s",
        event.post_id,
        post.status,
        post.scheduled_for.isoformat(),
        extra={"post": post.id},
    )


def build_handlers(*, module: str = "content", topic: TopicSpec = CONTENT) -> HandlerGroup:
    """The content handlers; tests pass their own topic and module (hence groups)."""
    group = HandlerGroup(module)
    group.handler(PostScheduled, action="record_scheduled_post", topics=(topic,))(
        content_record_scheduled_post_task
    )
    return group


# --- job -----------------------------------------------------------------------------------------


@dataclass
class PublishingRun:
    """One run of the publishing job: its counts, and the channels that failed transiently."""

    ctx: HandlerContext[Services]
    routes: Routes
    sender: TelegramSender
    settings: ContentSettings
    slot: datetime
    counts: dict[str, int] = field(
        default_factory=lambda: {"published": 0, "failed": 0, "retrying": 0, "next_occurrences": 0}
    )
    struggling: set[int] = field(default_factory=set)

    async def publish(self, post: ChannelPost) -> None:
        chat_id = await _chat_id(self.ctx.session, post)
        if chat_id in self.struggling:
            await self._retry_later(post, chat_id, "an earlier post of this channel failed in this run")
            return
        try:
            result = await self.sender.send(
                SendRequest(key=f"post:{post.id}", chat_id=chat_id, content=content_of(post))
            )
        except (PermanentError, ValidationError) as error:
            await self._fail(post, chat_id, f"{type(error).__name__}: {describe(error, 300)}")
            return
        except TransientError as error:
            self.struggling.add(chat_id)
            await self._retry_later(post, chat_id, f"{type(error).__name__}: {describe(error, 300)}")
            return
        message_id = result.message_ids[0] if result.message_ids else None
        if message_id is None:
            # Cut off mid-call earlier: it may be in the channel. Resending could post it twice.
            await self._fail(post, chat_id, f"send outcome {result.outcome.value}: check the channel")
            return
        published = await mark_published(self.ctx.session, post, message_id, self.ctx.clock.now())
        logger.info("post %s published in chat %s as message %s", published.post_id, chat_id, message_id)
        await self.routes.emit(self.ctx, published, self.routes.content)
        self.counts["published"] += 1
        await self._next_occurrence(post)

    async def _retry_later(self, post: ChannelPost, chat_id: int, reason: str) -> None:
        if self.slot - post.scheduled_for < self.settings.give_up_after:
            logger.warning("post %s not sent (%s); the next run retries it", post.id, reason)
            self.counts["retrying"] += 1
            return
        await self._fail(post, chat_id, f"still failing: {reason}")

    async def _fail(self, post: ChannelPost, chat_id: int, reason: str) -> None:
        failed = await mark_failed(self.ctx.session, post, reason)
        logger.error("post %s failed: %s", post.id, reason, extra={"chat_id": chat_id})
        await self.routes.emit(self.ctx, failed, self.routes.content)
        alert = AlertRaised(
            alert_key=f"post.failed:{failed.post_id}",
            severity="warning",
            summary=f"Channel post {failed.post_id} could not be published: {reason}",
            details={"post_id": failed.post_id, "channel_chat_id": chat_id, "reason": reason},
        )
        await self.routes.emit(self.ctx, alert, self.routes.alerts)
        self.counts["failed"] += 1
        # The series goes on: one failed occurrence does not cancel the next ones.
        await self._next_occurrence(post)

    async def _next_occurrence(self, post: ChannelPost) -> None:
        if post.recurrence is not None:
            upcoming = await schedule_next_occurrence(self.ctx.session, post, tz=self.ctx.services.timezone)
            self.counts["next_occurrences"] += upcoming is not None


async def scheduled_minutely_post_publishing(
    tick: SchedulerTick, ctx: HandlerContext[Services], *, routes: Routes | None = None
) -> dict[str, int]:
    """Publish the posts due at the tick's slot, in the job's transaction.

    One claim per run: the claimed rows stay locked until the run commits, so a concurrent run
    skips them (and this run's own locks would not stop it from claiming a post it left scheduled).
    """
    settings = ctx.services.content
    run = PublishingRun(ctx, routes or Routes(), ctx.services.sender, settings, tick.slot)
    for post in await claim_due_posts(ctx.session, tick.slot, limit=settings.posts_per_run):
        await run.publish(post)
    return run.counts


def register_jobs(
    registry: ScheduledJobs, *, routes: Routes | None = None, ticks: tuple[TopicSpec, ...] = ()
) -> None:
    """Register the publishing job; tests pass their own registry, event topics and tick topic."""
    registry.scheduled("scheduled_minutely_post_publishing", timeout_s=240, topics=ticks)(
        partial(scheduled_minutely_post_publishing, routes=routes or Routes())
    )


def content_of(post: ChannelPost) -> MessageContent:
    """The post's stored content as a message, protected from forwarding if the post is."""
    return MessageContent.model_validate({**post.content, "protect_content": post.is_protected})


async def _chat_id(session: AsyncSession, post: ChannelPost) -> int:
    chat_id = await session.scalar(select(Channel.telegram_chat_id).where(Channel.id == post.channel_id))
    if chat_id is None:
        raise PermanentError(f"channel {post.channel_id} of post {post.id} not found")
    return chat_id


handlers = build_handlers()
register_jobs(jobs)
