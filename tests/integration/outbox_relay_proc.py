"""An outbox relay in a process of its own, for the crash and hang tests.

``python -m tests.integration.outbox_relay_proc`` relays one topic's rows under its own advisory
lock key and tells the test what it does, one line each on stdout: ``ready``; ``leading`` when it
takes the lock; ``sent <outbox id>`` after each record it handed to the producer; ``acked <n>``
after a pass's acks (then it pauses ``--pause-s`` before marking: the window in which a SIGKILL
leaves published-but-unmarked rows); ``stood down`` when it leaves the leadership.
``--send-delay-s`` slows each send, so a test can stop the process mid-pass. SIGTERM stops it.
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

from dianabot_core.advisory_lease import AdvisoryLease
from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.kafka import create_broker
from dianabot_core.outbox import OutboxRelay, _PassResult
from dianabot_core.publisher import EventPublisher
from dianabot_core.settings import DatabaseSettings, KafkaSettings


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ReportingRelay(OutboxRelay):
    def __init__(self, *args: Any, pause_s: float, send_delay_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pause_s = pause_s
        self._send_delay_s = send_delay_s

    async def _publish(self, rows: Sequence[Row[Any]]) -> _PassResult:
        result = await super()._publish(rows)
        say(f"acked {len(result.acked)}")
        await asyncio.sleep(self._pause_s)
        return result

    async def _enqueue(self, row: Row[Any]) -> asyncio.Future[Any] | str:
        if self._send_delay_s:
            await asyncio.sleep(self._send_delay_s)
        pending = await super()._enqueue(row)
        say(f"sent {row.id}")
        return pending

    async def _lead(self, lease: AdvisoryLease, stop: asyncio.Event) -> None:
        say("leading")
        try:
            await super()._lead(lease, stop)
        finally:
            say("stood down")


async def main(args: argparse.Namespace) -> None:
    engine = create_engine(DatabaseSettings(url=SecretStr(args.database_url)))
    broker = create_broker(KafkaSettings(bootstrap_servers=args.bootstrap))
    await broker.connect()
    relay = ReportingRelay(
        create_session_factory(engine),
        EventPublisher(broker, "outbox-relay-proc"),
        batch_size=args.batch_size,
        poll_interval_s=0.05,
        standby_retry_s=0.2,
        topics={args.topic},
        lock_key=args.lock_key,
        lock_session_timeout_s=args.lock_timeout_s,
        pause_s=args.pause_s,
        send_delay_s=args.send_delay_s,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    say("ready")
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
    parser.add_argument("--send-delay-s", type=float, default=0.0)
    parser.add_argument("--lock-timeout-s", type=float, default=10.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parse_args()))
