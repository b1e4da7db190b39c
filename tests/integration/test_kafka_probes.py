"""Kafka reachability checks that give up never leave a connection open.

aiokafka leaks the socket of a client whose start is cancelled between connecting and the end of
its handshake. The watchdog probes Kafka every minute with a time limit, so on a slow broker each
timed-out probe would leak one connection for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings

from dianabot_core.kafka import KafkaUnreachableError, ensure_kafka_reachable
from dianabot_core.settings import KafkaSettings, Settings
from dianabot_core.watchdog import kafka_probe


async def test_timed_out_probes_and_preflights_close_every_connection(kafka: Settings) -> None:
    servers = kafka.kafka.bootstrap_servers
    findings = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Time limits short enough to end inside the connection's handshake, some of the time.
        for timeout_s in (0.001, 0.003, 0.005, 0.01, 0.02):
            probe = kafka_probe(KafkaSettings(bootstrap_servers=servers), timeout_s)
            findings += sum([await probe() is not None for _ in range(10)])
            with contextlib.suppress(KafkaUnreachableError):
                await ensure_kafka_reachable(
                    KafkaSettings(bootstrap_servers=servers, connect_timeout_s=timeout_s)
                )
        await asyncio.sleep(2)  # the starts given up on end, then close
        gc.collect()
    assert findings > 0  # the limits did cut probes short
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    assert await kafka_probe(KafkaSettings(bootstrap_servers=servers), 10)() is None
