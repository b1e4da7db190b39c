"""Consumer-group lag through Kafka's admin API: how many records each group is behind.

``group_lags`` lists the groups (the ``dianabot.`` ones unless named), their committed offsets and
the partitions their live members hold, and each partition's log start and end offsets. Lag is
``end - max(committed, log start)``: records already deleted by retention can no longer be read.
A partition a live member holds but the group never committed on counts from the log start, since
the pipeline's consumers start at the earliest record; so a stuck consumer that never committed
still shows its backlog. Partitions of deleted topics are left out.

aiokafka 0.14's admin client has no ListOffsets call, so log offsets come from a group-less
consumer. ``update_metrics=True`` also sets the ``dianabot_consumer_lag_records`` gauge per group and topic.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.structs import TopicPartition

from dianabot_core import metrics
from dianabot_core.kafka import _admin_security_options, admin_client
from dianabot_core.settings import KafkaSettings

DEFAULT_PREFIX = "dianabot."


@dataclass(frozen=True, slots=True, order=True)
class GroupLag:
    """One partition of one group; ``committed`` is None when the group never committed there."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


# Where a group stands on each partition it committed on or holds: offset, or None (no commit).
Positions = dict[TopicPartition, int | None]


async def group_lags(
    settings: KafkaSettings,
    groups: Sequence[str] | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    update_metrics: bool = False,
) -> list[GroupLag]:
    """The lag of `groups` (default: every group whose name starts with `prefix`), per partition."""
    admin = admin_client(settings, "lag")
    try:
        await admin.start()
        names = list(groups) if groups is not None else await group_names(admin, prefix)
        found = await asyncio.gather(*(_positions(admin, group) for group in names))
        positions = dict(zip(names, found, strict=True))
        live_topics = set(await admin.list_topics())
    finally:
        await admin.close()
    wanted = {tp for held in positions.values() for tp in held if tp.topic in live_topics}
    bounds = await log_bounds(settings, wanted)
    lags = sorted(
        _lag(group, tp, committed, *bounds[tp])
        for group, held in positions.items()
        for tp, committed in held.items()
        if tp in bounds
    )
    if update_metrics:
        set_lag_metrics(lags, replace=groups is None)
    return lags


async def group_names(admin: AIOKafkaAdminClient, prefix: str = DEFAULT_PREFIX) -> list[str]:
    listed = await admin.list_consumer_groups()
    return sorted(str(entry[0]) for entry in listed if str(entry[0]).startswith(prefix))


def _lag(group: str, tp: TopicPartition, committed: int | None, start: int, end: int) -> GroupLag:
    read_from = start if committed is None else max(committed, start)
    return GroupLag(group, tp.topic, tp.partition, committed, end, max(0, end - read_from))


# A broker creates its offsets topic on the first group request; until then (a few seconds on a new
# cluster) it answers "coordinator not available", which is no reason to fail a lag report.
COORDINATOR_WAIT_S = 15.0


async def _committed_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, Any]:
    waited = 0.0
    while True:
        try:
            return dict(await admin.list_consumer_group_offsets(group))
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            if waited >= COORDINATOR_WAIT_S:
                raise
            await asyncio.sleep(0.5)
            waited += 0.5


async def _positions(admin: AIOKafkaAdminClient, group: str) -> Positions:
    committed = await _committed_offsets(admin, group)
    positions: Positions = {tp: int(om.offset) for tp, om in committed.items() if om.offset >= 0}
    for tp in await _assigned(admin, group):
        positions.setdefault(tp, None)
    return positions


async def _assigned(admin: AIOKafkaAdminClient, group: str) -> set[TopicPartition]:
    """The partitions the group's live members hold.

    One group per request: aiokafka 0.14 parses a v3 DescribeGroups answer with the v2 schema,
    which reads the first group right and misreads the ones after it.
    """
    responses = await admin.describe_consumer_groups([group])
    held: set[TopicPartition] = set()
    for response in responses:
        for described in response.groups:
            held.update(_member_partitions(described))
    return held


def _member_partitions(described: Any) -> Iterable[TopicPartition]:
    error_code, _name, _state, protocol_type, _protocol, members = described[:6]
    if error_code or protocol_type != "consumer":
        return []
    partitions = []
    for member in members:
        assignment = member[4]
        if assignment:
            decoded = ConsumerProtocolMemberAssignment.decode(bytes(assignment))
            partitions += [TopicPartition(str(t), int(p)) for t, p in decoded.partitions()]
    return partitions


async def log_bounds(
    settings: KafkaSettings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    """(log start, end) offsets of each partition."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    consumer = offsets_reader(settings, "lag-offsets")
    try:
        await consumer.start()
        # Assigning first fetches every topic's metadata in one request (asked one by one, each
        # unknown topic costs a metadata round trip); paused, nothing is fetched.
        consumer.assign(wanted)
        consumer.pause(*wanted)
        starts = await consumer.beginning_offsets(wanted)
        ends = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    return {tp: (int(starts[tp]), int(ends[tp])) for tp in wanted}


def offsets_reader(settings: KafkaSettings, purpose: str, group_id: str | None = None) -> AIOKafkaConsumer:
    """A consumer that commits nothing on its own: for reading offsets and records by hand."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-{purpose}",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        **_admin_security_options(settings),
    )


def set_lag_metrics(lags: Iterable[GroupLag], *, replace: bool = False) -> None:
    """Set the lag gauge per (group, topic); `replace` first drops series of groups now gone."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for lag in lags:
        totals[(lag.group, lag.topic)] += lag.lag
    if replace:
        metrics.LAG.clear()
    for (group, topic), total in totals.items():
        metrics.LAG.labels(group, topic).set(total)


def lag_metrics_updater(
    settings: KafkaSettings, prefix: str = DEFAULT_PREFIX
) -> Callable[[], Awaitable[None]]:
    """For the health server's ``before_scrape``: refresh the lag gauge of every ``dianabot.`` group."""

    async def update() -> None:
        await group_lags(settings, prefix=prefix, update_metrics=True)

    return update
