"""Which handler reads which topic, in which consumer groups: read from the registry the service runs.

A dead letter names its handler (``x-dlq-handler`` = the handler's name); the suite expects one per
handler subscribed to the record's topic for a malformed record, and one per handler taking the
event's type for a well-formed event that fails for good.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consumers.registry import HANDLER_GROUPS
from dianabot_contracts.topics import TOPICS, TopicSpec
from dianabot_core.pipeline.consumer import TopicDeclaration
from dianabot_core.pipeline.handlers import HandlerGroup, retry_group


@dataclass(frozen=True)
class Lane:
    """One handler on one topic: its stage-0 consumer group, its retry topics, and the group that
    reads them (shared by every handler of the topic)."""

    handler: str
    topic: str
    partitions: int
    group: str
    event_types: frozenset[str]
    retry_topics: tuple[str, ...]
    retry_group: str


def service_lanes(groups: Iterable[HandlerGroup] = HANDLER_GROUPS) -> list[Lane]:
    lanes = []
    for group in groups:
        for spec in group.specs:
            for topic in spec.topics:
                name = spec.group_for(topic)
                retries = tuple(spec.retry_topic(name, n) for n in range(1, len(spec.retry_delays_s) + 1))
                lanes.append(
                    Lane(
                        spec.name,
                        topic.name,
                        topic.partitions,
                        name,
                        spec.event_types,
                        retries,
                        retry_group(topic.name),
                    )
                )
    return lanes


def handlers_on(lanes: Iterable[Lane], topic: str) -> frozenset[str]:
    """Every handler that reads `topic`: each dead-letters a malformed record of it once."""
    return frozenset(lane.handler for lane in lanes if lane.topic == topic)


def handlers_taking(lanes: Iterable[Lane], topic: str, event_type: str) -> frozenset[str]:
    """The handlers of `topic` that take `event_type` (the others ignore such events)."""
    return frozenset(lane.handler for lane in lanes if lane.topic == topic and event_type in lane.event_types)


def topic_spec(name: str) -> TopicSpec:
    return next(spec for spec in TOPICS if spec.name == name)


def declarations(lanes: Iterable[Lane]) -> list[TopicDeclaration]:
    """Every topic the consumers declare at start-up: the registry's and each lane's retry topics."""
    found = {spec.name: TopicDeclaration(spec.name, spec.partitions, spec.retention_ms) for spec in TOPICS}
    for lane in lanes:
        retention = topic_spec(lane.topic).retention_ms
        for retry in lane.retry_topics:
            found[retry] = TopicDeclaration(retry, lane.partitions, retention)
    return list(found.values())
