"""Channel join requests: recorded from ``channel.join_requested``, approved after a waiting time.

* handler ``record_join_request`` (group ``dianabot.channels.record_join_request``): records the
  request once (``dianabot_core/domain/channels.py``); a repeat changes nothing;
* job ``scheduled_minutely_join_request_approval``: claims the free channels' requests that waited
  ``join_request_wait`` by the tick's slot (``FOR UPDATE SKIP LOCKED``, at most
  ``approvals_per_run``), approves each through the Telegram sender and records the outcome;
* job ``scheduled_daily_join_request_cleanup``: deletes requests decided more than
  ``join_request_retention`` ago, in bounded batches.

Approval outcomes, per request: approved; ``expired`` when Telegram has no such request any more
(expired, withdrawn, or the user is already in); ``failed`` when Telegram refuses for good (e.g.
the bot lost its admin rights). A transient failure (5xx, network, a long rate-limit wait) leaves
the request pending and skips the rest of its chat for this run: the next minute's run retries.
Approving is idempotent at Telegram, so a run that approved and then failed to commit only makes
the next run approve again, which Telegram answers as done or as no longer pending.
"""

from __future__ import annotations

import logging

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Services
from dianabot_contracts.events import ChannelJoinRequested, SchedulerTick
from dianabot_contracts.topics import CHANNELS, TopicSpec
from dianabot_core.domain.channels import (
    claim_waiting_requests,
    decide,
    purge_join_requests_before,
    record_join_request,
)
from dianabot_core.models import ChannelJoinRequest, JoinRequestStatus
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.telegram.errors import TelegramPermanentError, TelegramTransientError
from dianabot_core.telegram.sender import TelegramSender

logger = logging.getLogger("dianabot.channels")


# --- handler -------------------------------------------------------------------------------------


async def channels_record_join_request_task(
    event: ChannelJoinRequested, ctx: HandlerContext[Services]
) -> None:
    """Record the join request; the approval job decides it when its wait is over."""
    if await record_join_request(ctx.session, event):
        logger.info("join request to chat %s recorded", event.chat_id)


def build_handlers(*, module: str = "channels", topic: TopicSpec = CHANNELS) -> HandlerGroup:
    """The module's handlers; tests pass their own module (hence consumer groups) and topic."""
    group = HandlerGroup(module)
    group.handler(ChannelJoinRequested, action="record_join_request", topics=(topic,))(
        channels_record_join_request_task
    )
    return group


# --- jobs ----------------------------------------------------------------------------------------


async def scheduled_minutely_join_request_approval(
    tick: SchedulerTick, ctx: HandlerContext[Services]
) -> dict[str, int]:
    """Approve the requests that waited long enough by the tick's slot, in the job's transaction.

    The claimed rows stay locked until the run commits, so a concurrent run skips them.
    """
    settings = ctx.services.channels
    sender = ctx.services.sender
    counts = {"approved": 0, "expired": 0, "failed": 0, "retrying": 0}
    struggling: set[int] = set()
    claimed = await claim_waiting_requests(
        ctx.session, tick.slot, wait=settings.join_request_wait, limit=settings.approvals_per_run
    )
    for request in claimed:
        if request.chat_id in struggling:
            counts["retrying"] += 1
            continue
        outcome = await _approve(sender, request)
        if outcome is None:
            struggling.add(request.chat_id)
            counts["retrying"] += 1
            continue
        decide(request, outcome, ctx.clock.now())
        counts[outcome.value] += 1
    if claimed:
        logger.info("join requests: %s", counts)
    return counts


async def _approve(sender: TelegramSender, request: ChannelJoinRequest) -> JoinRequestStatus | None:
    """Telegram's answer as the request's outcome; None when it is worth trying again later."""
    try:
        approved = await sender.approve_join_request(request.chat_id, request.telegram_user_id)
    except TelegramPermanentError as error:
        logger.error("join request to chat %s refused for good: %s", request.chat_id, error)
        return JoinRequestStatus.FAILED
    except TelegramTransientError as error:
        logger.warning(
            "join request to chat %s not approved yet (%s); retried next run", request.chat_id, error
        )
        return None
    return JoinRequestStatus.APPROVED if approved else JoinRequestStatus.EXPIRED


async def scheduled_daily_join_request_cleanup(
    tick: SchedulerTick, ctx: HandlerContext[Services]
) -> dict[str, int]:
    """Delete join requests decided past the retention, one short transaction per batch."""
    settings = ctx.services.channels
    cutoff = tick.slot - settings.join_request_retention
    deleted = await ctx.in_batches(
        lambda session, limit: purge_join_requests_before(session, cutoff, limit),
        batch_size=settings.batch_size,
        max_batches=settings.max_batches,
    )
    return {"join_requests_deleted": deleted}


def register_jobs(registry: ScheduledJobs, *, ticks: tuple[TopicSpec, ...] = ()) -> None:
    """Register the module's jobs; tests pass their own registry and tick topic."""
    registry.scheduled("scheduled_minutely_join_request_approval", timeout_s=240, topics=ticks)(
        scheduled_minutely_join_request_approval
    )
    registry.scheduled("scheduled_daily_join_request_cleanup", timeout_s=900, topics=ticks)(
        scheduled_daily_join_request_cleanup
    )


handlers = build_handlers()
register_jobs(jobs)
