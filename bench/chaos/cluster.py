"""The real processes of a chaos run, and the faults done to them and to Kafka and PostgreSQL.

Consumers (``faststream run consumers.app:app``), scheduler replicas (``faststream run
schedulers.app:app``) and the Bot API double (``python -m dianabot_double``) run from a
source tree (a snapshot of a commit, or the working tree) with their output in the run's log
directory. Kafka and PostgreSQL are the devstack's own, stopped and started with its scripts
(``kafka.sh down``/``up``; PostgreSQL is crashed with ``pg_ctl stop -m immediate`` and started with
``pg.sh up``, which also runs its crash recovery).

The scheduler leader is the replica whose server session holds the advisory lock: ``pg_locks``
gives that session's client port, and the port's socket belongs to exactly one of our processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "dianabot-chaos"
LOCK_APPLICATION = "dianabot-scheduler-lock"
PROBE_JOB = "scheduled_secondly_test_probe"
STATIC_SESSION_TIMEOUT_MS = 30_000


@dataclass
class ServiceConfig:
    """What every service process is given (the DIANABOT_ variables of its environment)."""

    source: Path
    logs: Path
    bootstrap_servers: str
    database_url: str
    bot_token: str = "123456:chaos-double"
    admin_chat_id: int = -1_000_000_000_001
    log_level: str = "WARNING"
    health_ports: dict[str, int] = field(default_factory=dict)

    def env(self, role: str, base_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
        env.update(
            PYTHONPATH=str(self.source),
            DIANABOT_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap_servers,
            DIANABOT_KAFKA__CLIENT_ID=f"{CLIENT_ID}-{role}",
            DIANABOT_DATABASE__URL=self.database_url,
            DIANABOT_TELEGRAM__BOT_TOKEN=self.bot_token,
            DIANABOT_TELEGRAM__API_BASE_URL=base_url,
            DIANABOT_TELEGRAM__ADMIN_CHAT_ID=str(self.admin_chat_id),
            DIANABOT_TELEMETRY__LOG_LEVEL=self.log_level,
            DIANABOT_TELEMETRY__LOG_JSON="false",
            # Several processes on one host: a consumer's health server on its own port (the suite
            # times its restarts by /readyz), none for the schedulers.
            DIANABOT_TELEMETRY__HTTP_PORT=str(self.health_ports.get(role, 0)),
            DIANABOT_SCHEDULER__HTTP_PORT="0",
            # One tick a second: the scheduler's exactly-once per slot is checked across its faults.
            DIANABOT_SCHEDULER__JOBS__SCHEDULED_SECONDLY_TEST_PROBE__ENABLED="true",
        )
        if role.startswith("consumer"):
            # Static membership, as a StatefulSet would run it: a killed consumer restarted under its
            # name takes its partitions back without rebalancing the other process's groups; the
            # session outlasts a restart (kill, start-up, joining every group) on a loaded machine.
            env.update(
                DIANABOT_KAFKA__GROUP_INSTANCE_ID=role,
                DIANABOT_KAFKA__SESSION_TIMEOUT_MS=str(STATIC_SESSION_TIMEOUT_MS),
            )
        return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class Cluster:
    """The service's processes; consumers and schedulers are addressed by index."""

    config: ServiceConfig
    consumer_count: int
    scheduler_count: int = 2
    base_url: str = ""
    consumers: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    schedulers: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    double: subprocess.Popen[bytes] | None = None
    exits: list[str] = field(default_factory=list)
    startup_failures: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.base_url = await self._start_double()
        self.consumers = [
            self._faststream("consumers.app:app", f"consumer-{i}") for i in range(self.consumer_count)
        ]
        self.schedulers = [
            self._faststream("schedulers.app:app", f"scheduler-{i}") for i in range(self.scheduler_count)
        ]

    async def _start_double(self) -> str:
        self.double = self._double_process()
        assert self.double.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.double.stdout.readline), timeout=60)
        if b"listening on" not in line:
            raise RuntimeError(f"the Bot API double did not start: {line!r}")
        return line.decode().rsplit(" ", 1)[-1].strip()

    def _double_process(self) -> subprocess.Popen[bytes]:
        """The double on a free port; it prints its URL on stdout, logs to the run's directory."""
        log = (self.config.logs / "double.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "dianabot_double", "--port", "0", "--log-level", "WARNING"],
            cwd=self.config.source,
            env={**os.environ, "PYTHONPATH": str(self.config.source)},
            stdout=subprocess.PIPE,
            stderr=log,
        )

    def _faststream(self, target: str, role: str) -> subprocess.Popen[bytes]:
        log = (self.config.logs / f"{role}.log").open("ab")
        return subprocess.Popen(
            [_bin("faststream"), "run", target],
            cwd=self.config.source,
            env=self.config.env(role, self.base_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_consumer(self, index: int) -> None:
        _kill(self.consumers[index])
        self.consumers[index] = None

    def restart_consumer(self, index: int) -> None:
        if self.consumers[index] is None:
            self.consumers[index] = self._faststream("consumers.app:app", f"consumer-{index}")

    async def consumer_ready(self, index: int, within_s: float = 120.0) -> float | None:
        """Seconds until consumer `index` answers /readyz with 200 (every subscriber started, its
        dependencies reachable); None when it did not within `within_s`."""
        port = self.config.health_ports.get(f"consumer-{index}")
        if not port:
            return None
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() - started < within_s:
                if await answers_ready(http, port):
                    return round(time.monotonic() - started, 1)
                await asyncio.sleep(0.2)
        return None

    def kill_scheduler(self, index: int) -> None:
        _kill(self.schedulers[index])
        self.schedulers[index] = None

    def restart_scheduler(self, index: int) -> None:
        if self.schedulers[index] is None:
            self.schedulers[index] = self._faststream("schedulers.app:app", f"scheduler-{index}")

    def check_alive(self) -> None:
        """Restart processes that ended on their own, noting why (a crash is a finding; a start-up
        refused while Kafka or PostgreSQL is down is the service's documented behaviour)."""
        for kind, processes in (("consumer", self.consumers), ("scheduler", self.schedulers)):
            for i, process in enumerate(processes):
                if process is not None and process.poll() is not None:
                    processes[i] = None
                    self._note_exit(f"{kind}-{i}", process.returncode)
                    if kind == "consumer":
                        self.restart_consumer(i)
                    else:
                        self.restart_scheduler(i)

    def _note_exit(self, role: str, code: int) -> None:
        with (self.config.logs / f"{role}.log").open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 2000))
            last = log.read().decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        if last[0].startswith("startup failed:"):
            self.startup_failures.append(f"{role}: {last[0]}")
        else:
            self.exits.append(f"{role} exited with {code}: {last[0][:300]}")

    async def stop_service(self) -> None:
        running = [p for p in self.consumers + self.schedulers if p is not None]
        self.consumers = [None] * len(self.consumers)
        self.schedulers = [None] * len(self.schedulers)
        for process in running:
            process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_wait_all, running, 60)

    async def stop_schedulers(self) -> None:
        running = [p for p in self.schedulers if p is not None]
        self.schedulers = [None] * len(self.schedulers)  # stopped on purpose: not restarted
        for process in running:
            process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_wait_all, running, 30)

    async def stop_double(self) -> None:
        if self.double is not None:
            self.double.send_signal(signal.SIGTERM)
            await asyncio.to_thread(_wait_all, [self.double], 15)

    def scheduler_pids(self) -> dict[int, int]:
        return {p.pid: i for i, p in enumerate(self.schedulers) if p is not None}


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _wait_all(processes: list[subprocess.Popen[bytes]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the scheduler leader ------------------------------------------------------------------------


async def lock_holder_port(engine: AsyncEngine, key: int) -> int | None:
    """The client port of the session holding the scheduler's advisory lock, if any."""
    query = text(
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
        "AND a.application_name = :app AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
    )
    async with engine.connect() as connection:
        ports = (await connection.execute(query, {"app": LOCK_APPLICATION, "key": key})).scalars().all()
    return int(ports[0]) if len(ports) == 1 and ports[0] is not None else None


def _socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def pid_owning_port(port: int, pids: list[int]) -> int | None:
    """Which of `pids` has the socket whose local port is `port` open (Linux /proc)."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return pid
            except OSError:
                continue
    return None


async def scheduler_leader(cluster: Cluster, engine: AsyncEngine, key: int) -> int | None:
    """The index of the replica leading now, or None (no lock holder, or not one of ours)."""
    port = await lock_holder_port(engine, key)
    if port is None:
        return None
    pids = cluster.scheduler_pids()
    pid = pid_owning_port(port, list(pids))
    return None if pid is None else pids[pid]


# --- Kafka and PostgreSQL ------------------------------------------------------------------------


async def _run(*command: str, cwd: Path = REPO) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {err.decode()[-500:]}")


async def kafka_down() -> None:
    await _run(str(REPO / "devstack/kafka/kafka.sh"), "down")


async def kafka_up() -> None:
    await _run(str(REPO / "devstack/kafka/kafka.sh"), "up")


def _pg_ctl() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("no pg_ctl under /usr/lib/postgresql/*/bin")
    return str(found[-1])


def _pgdata() -> Path:
    """The devstack cluster's data directory, found as pg.sh finds it."""
    homes = [os.environ.get("PG_HOME_DIR"), str(REPO / ".devstack/postgres"), "/var/tmp/dianabot-postgres"]
    for home in filter(None, homes):
        if (Path(home) / "data/postmaster.pid").exists():
            return Path(home) / "data"
    raise RuntimeError("no running devstack PostgreSQL found (postmaster.pid)")


async def postgres_crash() -> None:
    """Stop the server at once, as a crash would: no checkpoint, sessions cut, recovery on start."""
    command = [_pg_ctl(), "-D", str(_pgdata()), "-m", "immediate", "-w", "stop"]
    if os.geteuid() == 0:  # the server runs as the postgres user, as pg.sh starts it
        command = ["runuser", "-u", "postgres", "--", *command]
    await _run(*command, cwd=Path("/"))


async def postgres_up() -> None:
    await _run(str(REPO / "devstack/postgres/pg.sh"), "up")


def free_ports(count: int) -> list[int]:
    """`count` TCP ports free on this host now (bound to port 0 and released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


async def answers_ready(http: aiohttp.ClientSession, port: int) -> bool:
    """Whether the service process on `port` answers /readyz with 200."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
