"""A Redis master, one replica and three Sentinels, started by a test on free ports.

Each server is the machine's ``redis-server`` (``redis-server <conf> --sentinel`` for
a Sentinel), in a directory of the test's own, with nothing persisted. Failover is
quick: a master that does not answer for ``DOWN_AFTER_MS`` is down, and a failover
may be retried after ``FAILOVER_TIMEOUT_MS``. :meth:`SentinelSet.start` returns once
every Sentinel knows the replica and the two other Sentinels, so a failover can
start as soon as the master dies; :meth:`SentinelSet.kill_master` kills it with
SIGKILL (it keeps nothing, so nothing brings it back).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncjobs._services import find_redis_server, free_port

SERVICE = "jobs"
DOWN_AFTER_MS = 600
FAILOVER_TIMEOUT_MS = 2000
SENTINELS = 3
QUORUM = 2


@dataclass
class _Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]


@dataclass
class SentinelSet:
    """Master, replica and Sentinels under ``directory``; a context manager."""

    directory: Path
    password: str | None = None
    """The master's and the replica's (``requirepass``); the Sentinels have none."""
    master_port: int = field(default_factory=free_port)
    servers: list[_Server] = field(default_factory=list)

    @property
    def sentinel_ports(self) -> list[int]:
        return [s.port for s in self.servers if s.name.startswith("sentinel")]

    def url(self, db: int = 0, service: str = SERVICE) -> str:
        """``ASYNCJOBS_REDIS_URL`` for this set: every Sentinel, the service, the database."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{service}/{db}"

    def start(self, *, within: float = 30.0) -> SentinelSet:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._redis("master", self.master_port)
        self._redis("replica", free_port(), "--replicaof", "127.0.0.1", str(self.master_port))
        for i in range(SENTINELS):
            port = free_port()
            conf = self.directory / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{i}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} {QUORUM}\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else "")
            )
            self._spawn(f"sentinel-{i}", port, [str(conf), "--sentinel"])
        _wait(self._ready, within, "every Sentinel to know the replica and the others")
        return self

    def _redis(self, name: str, port: int, *extra: str) -> None:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / f"{name}.log")]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self._spawn(name, port, [*args, *extra])

    def _spawn(self, name: str, port: int, args: list[str]) -> None:
        process = subprocess.Popen(
            [find_redis_server(), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.servers.append(_Server(name, port, process))
        _wait(lambda: _answers(port) or _exited(process, name), 10, f"{name} to listen")

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            state = self.sentinel(port, "SENTINEL", "MASTER", SERVICE)
            if state is None:
                return False
            if int(state["num-other-sentinels"]) < SENTINELS - 1 or int(state["num-slaves"]) < 1:
                return False
        return True

    def sentinel(self, port: int, *command: str) -> dict[str, str] | None:
        """A Sentinel's reply to ``command`` as a dict, ``None`` if it did not answer."""
        import redis

        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            reply: Any = client.execute_command(*command)
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        if isinstance(reply, dict):
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def master_address(self) -> tuple[str, int] | None:
        """The master the first Sentinel that answers names."""
        import redis

        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            try:
                found = client.sentinel_get_master_addr_by_name(SERVICE)
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
            if found:
                return str(found[0]), int(found[1])
        return None

    def kill_master(self) -> None:
        """SIGKILL the current master (it is not started again)."""
        address = self.master_address()
        assert address is not None, "no Sentinel names a master"
        server = next(s for s in self.servers if s.port == address[1])
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            try:
                server.process.wait(5)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        self.servers.clear()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _exited(process: subprocess.Popen[bytes], name: str) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with code {process.returncode} before listening")
    return False


def _wait(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within}s: {what}")
        time.sleep(0.05)
