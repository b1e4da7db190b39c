"""A consumer process for the crash test: `faststream run tests.integration.crash_consumer:app`.

Its one handler records an effect per event (no uniqueness in the effects table), so any event
handled twice, or lost, shows up in the counts. CRASH_TOPIC and CRASH_MODULE name the run.
"""

from __future__ import annotations

import asyncio
import os
from functools import cache

from faststream import FastStream

from consumers.app import create_app
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import TopicSpec
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.runtime import settings_or_exit
from tests.integration.pipeline_support import record_effect

PARTITIONS = 6


def crash_group(topic: str, module: str) -> HandlerGroup:
    group = HandlerGroup(module)

    topics = (TopicSpec(name=topic, partitions=PARTITIONS, key="user"),)

    @group.handler(UserActivity, action="count", topics=topics, batch_size=100)
    async def crash_count_task(event: UserActivity, ctx: HandlerContext) -> None:
        await asyncio.sleep(0.002)  # slow enough that the kills land mid-stream
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, int(event.kind))

    return group


@cache
def _app() -> FastStream:
    group = crash_group(os.environ["CRASH_TOPIC"], os.environ["CRASH_MODULE"])
    return create_app(settings_or_exit(), groups=[group])


def __getattr__(name: str) -> FastStream:
    if name == "app":
        return _app()
    raise AttributeError(name)
