"""An outbox relay in its own process, for the crash test: ``python -m tests.integration.outbox_relay_proc``.

It relays one topic's rows under its own advisory lock key. After Kafka acknowledged a batch
and before the rows are marked, it prints ``acked <n>`` and pauses ``--pause-s``: the window in
which a SIGKILL leaves published-but-unmarked rows, which the next relay publishes again.
SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Row

from core.db import create_engine, create_session_factory
from core.kafka import create_broker
from core.outbox import OutboxRelay
from core.publisher import EventPublisher
from core.settings import DatabaseSettings, KafkaSettings


class PausingRelay(OutboxRelay):
    def __init__(self, *args: Any, pause_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pause_s = pause_s

    async def _publish(self, rows: Sequence[Row[Any]]) -> tuple[list[int], BaseException | None]:
        acked, error = await super()._publish(rows)
        sys.stdout.write(f"acked {len(acked)}\n")
        sys.stdout.flush()
        await asyncio.sleep(self._pause_s)
        return acked, error


async def main(args: argparse.Namespace) -> None:
    engine = create_engine(DatabaseSettings(url=SecretStr(args.database_url)))
    broker = create_broker(KafkaSettings(bootstrap_servers=args.bootstrap))
    await broker.connect()
    relay = PausingRelay(
        create_session_factory(engine),
        EventPublisher(broker, "outbox-relay-proc"),
        batch_size=args.batch_size,
        poll_interval_s=0.05,
        standby_retry_s=0.2,
        topics={args.topic},
        lock_key=args.lock_key,
        pause_s=args.pause_s,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        await relay.run(stop)
    finally:
        await broker.stop()
        await engine.dispose()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--lock-key", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--pause-s", type=float, default=0.2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parse_args()))
