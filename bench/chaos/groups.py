"""Kafka before the run: every topic declared, and every consumer group of the service at the end.

The run uses the service's own topics and groups (the dev ones, as ``make run`` does). Committing
each group's offsets at the end of its topics first means the run's consumers see only the run's
records: nothing left over from earlier runs or demos, including records an earlier run could not
get past. Committing fails while a group has live members: then another service is running on
these topics, and the run stops rather than share its partitions.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from bench.chaos.readback import end_offsets
from bench.chaos.topology import Lane, declarations
from dianabot_core.kafka import admin_client
from dianabot_core.lag import offsets_reader
from dianabot_core.pipeline.consumer import declare_topics
from dianabot_core.settings import KafkaSettings


class GroupBusyError(RuntimeError):
    """A consumer group of the service has live members outside this run."""


async def declare(settings: KafkaSettings, lanes: list[Lane]) -> None:
    admin = admin_client(settings, "chaos-declare")
    await admin.start()
    try:
        await declare_topics(admin, declarations(lanes), settings.topic_replication_factor)
    finally:
        await admin.close()


def _group_partitions(lanes: list[Lane]) -> dict[str, list[TopicPartition]]:
    found: dict[str, list[TopicPartition]] = {}
    for lane in lanes:
        found[lane.group] = [TopicPartition(lane.topic, p) for p in range(lane.partitions)]
        retries = found.setdefault(lane.retry_group, [])
        retries += [TopicPartition(t, p) for t in lane.retry_topics for p in range(lane.partitions)]
    return found


async def skip_to_end(settings: KafkaSettings, lanes: list[Lane], parallel: int = 8) -> int:
    """Commit every group's offsets at the end of its partitions; returns the number of groups."""
    groups = _group_partitions(lanes)
    ends = await end_offsets(settings, sorted({tp for tps in groups.values() for tp in tps}))
    limit = asyncio.Semaphore(parallel)

    async def one(group: str, partitions: list[TopicPartition]) -> None:
        async with limit:
            await _commit(settings, group, {tp: int(ends[tp]) for tp in partitions})

    await asyncio.gather(*(one(g, tps) for g, tps in groups.items()))
    return len(groups)


async def _commit(settings: KafkaSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer: AIOKafkaConsumer = offsets_reader(settings, "chaos-reset", group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
    except Exception as error:
        raise GroupBusyError(
            f"could not reset consumer group {group} ({type(error).__name__}): is the service running "
            "elsewhere on these topics (make run, a test)? Stop it first."
        ) from error
    finally:
        await consumer.stop()
