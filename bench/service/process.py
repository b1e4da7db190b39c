"""The consumers process under measurement: started by the chaos harness, waited for, sampled.

The harness's ``Cluster`` starts ``faststream run consumers.app:app`` and the Bot API double; the
config below differs from a chaos run's only where a lone measured process needs it: its health
server is on (as deployed), on a free port, and the chaos scheduler probe job is not enabled.

CPU and memory come from ``/proc``: utime + stime of the process and of any child it has (reaped
children's cutime + cstime included), and the sum of their resident set sizes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient

from bench.chaos.cluster import Cluster, ServiceConfig, answers_ready
from dianabot_core.kafka import admin_client
from dianabot_core.lag import group_names
from dianabot_core.pipeline.handlers import APP
from dianabot_core.settings import KafkaSettings

CLIENT_ID = "dianabot-bench-service"
CONSUMER_ROLE = "consumer-0"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class BenchServiceConfig(ServiceConfig):
    health_port: int = 0

    def env(self, role: str, base_url: str) -> dict[str, str]:
        env = super().env(role, base_url)
        # The chaos runs' one-tick-a-second probe job: no scheduler runs here; keep the defaults.
        env.pop("DIANABOT_SCHEDULER__JOBS__SCHEDULED_SECONDLY_TEST_PROBE__ENABLED", None)
        env["DIANABOT_KAFKA__CLIENT_ID"] = f"{CLIENT_ID}-{role}"
        if role.startswith("consumer"):
            env["DIANABOT_TELEMETRY__HTTP_PORT"] = str(self.health_port)
        return env


def consumer_process(cluster: Cluster) -> Popen[bytes]:
    """The one consumers process; raises with the end of its log if it has exited."""
    process = cluster.consumers[0] if cluster.consumers else None
    if process is None or process.poll() is not None:
        log = cluster.config.logs / f"{CONSUMER_ROLE}.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        code = None if process is None else process.returncode
        raise RuntimeError(f"the consumers process exited ({code}):\n{tail}")
    return process


async def wait_ready(
    cluster: Cluster, kafka: KafkaSettings, port: int, within_s: float = 300
) -> dict[str, Any]:
    """Until /readyz answers 200 (the app's after-startup hook ran: every subscriber has started, each
    once its group assigned it partitions), then until
    the groups the process is a member of are all stable and stay as many for 3 s.

    The groups are counted from Kafka, not from the handler registry: the number is what the
    process really holds.
    """
    started = time.monotonic()
    deadline = started + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while not await answers_ready(http, port):
            consumer_process(cluster)
            if time.monotonic() > deadline:
                raise RuntimeError(f"/readyz not 200 within {within_s}s")
            await asyncio.sleep(0.5)
    readyz_s = time.monotonic() - started
    admin = admin_client(kafka, "bench-service-ready")
    await admin.start()
    try:
        counts: list[int] = []
        while len(counts) < 3 or len(set(counts[-3:])) > 1:
            consumer_process(cluster)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the process's consumer groups not stable within {within_s}s")
            mine = await groups_with_member(admin, f"{CLIENT_ID}-{CONSUMER_ROLE}")
            if shared := [group for group, (_, clients) in mine.items() if len(clients) > 1]:
                raise RuntimeError(
                    f"other consumers are in the process's groups {shared[:5]}: stop them first"
                )
            stable = all(state == "Stable" for state, _ in mine.values())
            counts.append(len(mine) if stable else -1)
            await asyncio.sleep(1)
    finally:
        await admin.close()
    return {
        "readyz_s": round(readyz_s, 1),
        "groups_stable_s": round(time.monotonic() - started, 1),
        "consumer_groups": counts[-1],
    }


async def groups_with_member(admin: AIOKafkaAdminClient, client_id: str) -> dict[str, tuple[str, set[str]]]:
    """The service's consumer groups that have `client_id` as a member: their state and members."""
    limit = asyncio.Semaphore(16)

    async def describe(group: str) -> tuple[str, str, set[str]]:
        # One group per request: aiokafka 0.14 misreads a DescribeGroups answer with several
        # (see dianabot_core/lag.py).
        async with limit:
            [response] = await admin.describe_consumer_groups([group])
        [described] = response.groups
        return group, str(described[2]), {str(member[1]) for member in described[5]}

    found = await asyncio.gather(*(describe(group) for group in await group_names(admin, f"{APP}.")))
    return {group: (state, clients) for group, state, clients in found if client_id in clients}


async def foreign_members(kafka: KafkaSettings) -> dict[str, list[str]]:
    """Other consumers in the process's groups (a test or another run on the same Kafka takes
    partitions, and so events, away from the process)."""
    admin = admin_client(kafka, "bench-service-members")
    await admin.start()
    try:
        mine = await groups_with_member(admin, f"{CLIENT_ID}-{CONSUMER_ROLE}")
    finally:
        await admin.close()
    return {
        group: sorted(clients - {f"{CLIENT_ID}-{CONSUMER_ROLE}"})
        for group, (_, clients) in mine.items()
        if len(clients) > 1
    }


# --- /proc ---------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its living descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids`, and of their children already waited for."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    pages = 0
    for pid in pids:
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return pages * PAGE_SIZE / 2**20


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def sample_idle(cluster: Cluster, seconds: float) -> dict[str, Any]:
    """CPU share of one core and memory of the process over `seconds`, sampled once a second."""
    pid = consumer_process(cluster).pid
    pids = process_tree(pid)
    start_wall, start_cpu = time.monotonic(), cpu_seconds(pids)
    rss_start = rss_mb(pids)
    per_second: list[float] = []
    last_wall, last_cpu = start_wall, start_cpu
    while (now := time.monotonic()) - start_wall < seconds:
        await asyncio.sleep(min(1.0, seconds - (now - start_wall)))
        consumer_process(cluster)
        pids = process_tree(pid)
        wall, cpu = time.monotonic(), cpu_seconds(pids)
        per_second.append(100 * (cpu - last_cpu) / (wall - last_wall))
        last_wall, last_cpu = wall, cpu
    window = last_wall - start_wall
    return {
        "idle_cpu_percent_of_core": round(100 * (last_cpu - start_cpu) / window, 2),
        "rss_mb": round(rss_mb(pids), 1),
        "rss_mb_at_window_start": round(rss_start, 1),
        "cpu_percent_of_core_per_second": {
            "p50": round(statistics.median(per_second), 1),
            "max": round(max(per_second), 1),
        },
        "window_s": round(window, 1),
        "processes": len(pids),
        "threads": thread_count(pid),
    }
