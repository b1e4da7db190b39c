"""How a domain module declares its handlers, and what a handler receives.

    subscriptions = HandlerGroup("subscriptions")

    @subscriptions.handler(SubscriptionExpiring, action="send_expiry_reminder", timeout_s=30)
    async def subscriptions_send_expiry_reminder_task(
        event: SubscriptionExpiring, ctx: HandlerContext[Services]
    ) -> None:
        await ctx.services.sender.send(...)

Each handler gets its own consumer group, ``dianabot.{module}.{action}``, its own retry topics and
its own ledger name, so handlers of the same event succeed, fail and retry independently.
A handler never commits, retries, checks for duplicates or sleeps: the pipeline does that. The one
exception: jobs that work in bounded batches, through `HandlerContext.in_batches` (and job-run
bookkeeping through `HandlerContext.transactions`).

``ctx.services`` is whatever the composition root built once for its handlers (the consumers' is
``consumers.services.Services``: settings sections, the Telegram sender, ...); the pipeline hands it
on and never looks inside, so the context is generic over its type: ``HandlerContext[Services]``.
A handler that needs no services may write plain ``HandlerContext`` (its services are an ``object``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typing_extensions import TypeVar

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.topics import NOTIFICATIONS_BULK, NOTIFICATIONS_CRITICAL, ROUTES, TopicSpec
from dianabot_core.clock import Clock

P = TypeVar("P", bound=EventPayload)
# What the composition root hands every handler (read-only, hence covariant; ``object`` when unsaid).
S = TypeVar("S", covariant=True, default=object)

# The envelope's ``producer`` of every event the pipeline's handlers emit.
PRODUCER = "dianabot-jobs"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY_DELAYS_S: tuple[float, ...] = (10.0, 60.0, 600.0)
APP = "dianabot"


class Emitter(Protocol):
    """Writes an event to the outbox in the handler's transaction; pass `event_id` for an event
    whose id must be deterministic (e.g. one reminder per subscription cycle, ever), and `topic`
    to send it somewhere other than the registry's topic for its type (a lane, a test's topic)."""

    def __call__(
        self, payload: EventPayload, *, event_id: UUID | None = None, topic: TopicSpec | None = None
    ) -> Awaitable[EventEnvelope]: ...


@dataclass(frozen=True)
class HandlerContext(Generic[S]):
    """What a handler may use: the unit of work's session, the event's envelope, and emit().

    ``emit`` writes to the outbox in the same transaction, so an emitted event exists exactly
    when the handler's effects do. ``services`` is what the composition root built once for the
    handlers (long-lived adapters such as the Telegram sender, settings sections), fully typed.
    """

    session: AsyncSession
    envelope: EventEnvelope
    clock: Clock
    emit: Emitter
    services: S
    attempt: int = 0

    def transactions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions for short transactions of their own, outside the handler's unit of work.

        The one exception to "only the pipeline commits", for two needs: bookkeeping that must
        outlive a failing handler (a job's run record), and jobs that work through many rows in
        bounded batches (see `in_batches`), where one long transaction would hold locks for the
        whole run. Whatever runs here must be idempotent: a redelivered event runs it again.
        """
        if self.session.bind is None:
            raise RuntimeError("short transactions need a session bound to an engine")
        return async_sessionmaker(self.session.bind, expire_on_commit=False)

    async def in_batches(self, step: BatchStep, *, batch_size: int, max_batches: int) -> int:
        """Run ``step(session, batch_size)`` in one short transaction per batch until it does fewer
        than ``batch_size`` rows or ``max_batches`` ran; return the rows done in all.

        A crash half-way loses nothing as long as each batch is idempotent: the rerun (or the next
        run) continues where this one stopped.
        """
        sessions = self.transactions()
        total = 0
        for _ in range(max_batches):
            async with sessions() as session, session.begin():
                done = await step(session, batch_size)
            total += done
            if done < batch_size:
                break
        return total


@dataclass(frozen=True)
class Delivery(Generic[P]):
    """One event of a batch handed to a batch handler."""

    payload: P
    envelope: EventEnvelope
    attempt: int = 0


BatchStep = Callable[[AsyncSession, int], Awaitable[int]]
"""One bounded batch of a job's work in the given session (at most the given rows); the rows done."""


class BatchEmitter(Protocol):
    """``Emitter`` for a batch handler: `caused_by` names the event of the batch that caused it."""

    def __call__(
        self,
        payload: EventPayload,
        caused_by: EventEnvelope,
        *,
        event_id: UUID | None = None,
        topic: TopicSpec | None = None,
    ) -> Awaitable[EventEnvelope]: ...


@dataclass(frozen=True)
class BatchContext(Generic[S]):
    """What a batch handler may use; ``emit(payload, caused_by)`` names the event that caused it."""

    session: AsyncSession
    clock: Clock
    emit: BatchEmitter
    services: S


HandlerFunc = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class HandlerSpec(Generic[P]):
    module: str
    action: str
    events: tuple[type[EventPayload], ...]
    func: HandlerFunc
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S
    retry_jitter: float = 0.2
    batch_size: int = 500
    # Listen somewhere other than the registry's topic (custom routing, tests, benchmarks).
    topic_override: tuple[TopicSpec, ...] = ()
    # A batch handler gets all new events of a batch at once (one call, one statement per batch).
    batch: bool = False

    @property
    def name(self) -> str:
        """``dianabot.{module}.{action}``: the consumer group, span name and ledger consumer."""
        return f"{APP}.{self.module}.{self.action}"

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(e.event_type for e in self.events)

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        if self.topic_override:
            return self.topic_override
        found: dict[str, TopicSpec] = {}
        for event in self.events:
            topic = ROUTES[event.event_type]
            found[topic.name] = topic
            if topic is NOTIFICATIONS_BULK:  # notifications travel in two priority lanes
                found[NOTIFICATIONS_CRITICAL.name] = NOTIFICATIONS_CRITICAL
        return tuple(found.values())

    def group_for(self, topic: TopicSpec) -> str:
        """One group per topic lane, so a critical lane never waits behind a bulk backlog."""
        return self.name if len(self.topics) == 1 else f"{self.name}.{topic.name.rsplit('.', 1)[-1]}"

    def retry_topic(self, group: str, attempt: int) -> str:
        return f"{group}.retry.{attempt}"


def retry_group(source_topic: str) -> str:
    """The one consumer group that reads every retry topic of the handlers of `source_topic`."""
    return f"{source_topic}.retries"


def is_retry_group(group: str) -> bool:
    """Retry groups lag by design: their records wait for their due time."""
    return group.endswith(".retries") or ".retry." in group


class HandlerGroup:
    """The handlers of one domain module (the seed's `{module}_tasks.py`)."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.specs: list[HandlerSpec[Any]] = []

    def handler(
        self, *events: type[P], action: str, **options: Any
    ) -> Callable[[HandlerFn[P]], HandlerFn[P]]:
        """Register a per-event handler; options are HandlerSpec's (timeout_s, retry_delays_s,
        retry_jitter, batch_size, and `topics` to listen somewhere other than the registry's topic)."""
        return self._register(events, action, batch=False, **options)

    def batch_handler(
        self, *events: type[P], action: str, **options: Any
    ) -> Callable[[BatchHandlerFunc[P]], BatchHandlerFunc[P]]:
        """Like `handler`, for work that is cheaper in bulk (one UPDATE for many users, say).

        The function gets the batch's new events in order; if it fails, the pipeline calls it
        again with one event at a time, so a bad event still fails alone.
        """
        return self._register(events, action, batch=True, **options)

    def _register(
        self,
        events: tuple[type[EventPayload], ...],
        action: str,
        *,
        batch: bool,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S,
        retry_jitter: float = 0.2,
        batch_size: int = 500,
        topics: tuple[TopicSpec, ...] = (),
    ) -> Callable[[F], F]:
        if not events:
            raise ValueError("a handler needs at least one event type")

        def register(func: F) -> F:
            self.specs.append(
                HandlerSpec(
                    module=self.module,
                    action=action,
                    events=events,
                    func=func,
                    timeout_s=timeout_s,
                    retry_delays_s=retry_delays_s,
                    retry_jitter=retry_jitter,
                    batch_size=batch_size,
                    topic_override=topics,
                    batch=batch,
                )
            )
            return func

        return register


# A handler may ask for any services type: the composition root decides what it gets.
HandlerFn = Callable[[P, HandlerContext[Any]], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Awaitable[None]])
BatchHandlerFunc = Callable[[Sequence[Delivery[P]], BatchContext[Any]], Awaitable[None]]
