"""A worker whose event loop is blocked is not taken for dead: its keepalive thread.

Two worker processes share a queue while a job blocks one's loop for ten heartbeats;
the keepalive (:class:`asyncjobs._liveness.Keepalive`) on its own against a Redis
over a Unix socket that stops and starts again; its client through the Sentinels
across a failover; and a worker that stopped leaves no thread and no registration.
(A SIGKILLed worker's jobs still run again elsewhere: ``test_worker_core.py``.)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from asyncjobs import App, Settings
from asyncjobs._arq import blocking_client
from asyncjobs._liveness import Keepalive, worker_key
from asyncjobs._services import find_redis_server
from asyncjobs.runner import Worker
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.helpers import job_finished, log_events, wait_until
from tests.sentinels import SentinelSet
from tests.workerjobs import blocks_the_loop, record_args

pytestmark = pytest.mark.slow

HEARTBEAT = 0.5
BLOCKED_FOR = 4.0
"""Seconds the job blocks its worker's loop: eight heartbeats, three of which would do."""


async def test_a_job_blocking_the_loop_runs_once_and_its_worker_is_not_taken_for_dead(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_HEARTBEAT": str(HEARTBEAT)}
    with WorkerProcess(env, cwd=ROOT) as first, WorkerProcess(env, cwd=ROOT) as second:
        job = await app.enqueue(blocks_the_loop, BLOCKED_FOR)
        assert job is not None
        # Meanwhile the other worker beats every 0.5 s, each beat looking for dead workers:
        # without the keepalive, the blocked one's registration would expire after 1.5 s
        # and its job would start again there.
        await job_finished(redis, job.job_id, within=60)
    lines = [*first.lines, *second.lines]  # whole: the processes ended, their output read
    assert len(log_events(lines, "worker.stopped")) == 2
    assert int(await redis.get("blocking-starts") or 0) == 1
    assert log_events(lines, "worker.recovered") == []
    assert log_events(lines, "worker.presumed_dead") == []
    assert log_events(lines, "worker.heartbeat_failed") == []
    blocked = log_events(lines, "job.succeeded", job="blocks_the_loop")
    assert [e["job_id"] for e in blocked] == [job.job_id]
    assert await redis.keys("asyncjobs:worker:*") == []  # both deregistered, none renewed


async def test_a_stopped_worker_leaves_no_keepalive_thread_and_no_registration(
    app: App, redis: aioredis.Redis
) -> None:
    await app.enqueue(record_args, "one")
    await Worker(app, burst=True, handle_signals=False, poll_delay=0.01).run()
    assert [t.name for t in threading.enumerate() if t.name == "asyncjobs.keepalive"] == []
    assert await redis.keys("asyncjobs:worker:*") == []
    assert await redis.llen("runs") == 1


class UnixRedis:
    """A ``redis-server`` listening on a Unix socket only, stopped and started at will."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def start(self) -> None:
        args = ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            [find_redis_server(), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, within=10, what="redis-server on its Unix socket")

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, "redis-server exited"
        client = self.client()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def unix_redis() -> Iterator[UnixRedis]:
    # A short directory: a Unix socket's path is limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="aj-"))
    server = UnixRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


class Counting:
    """The keepalive's client, counting the renewals it was asked for."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.calls = 0

    def pexpire(self, name: str, time: int) -> Any:
        self.calls += 1
        return self.client.pexpire(name, time)

    def close(self) -> None:
        self.client.close()

    def more(self, count: int) -> Callable[[], bool]:
        """A check: whether ``count`` more renewals were asked for since now."""
        since = self.calls
        return lambda: self.calls >= since + count


def _renewed(server: UnixRedis, key: str, ttl_ms: int) -> bool:
    """Whether ``key`` exists with a TTL the keepalive set (it was written with more)."""
    client = server.client()
    try:
        return 0 < int(client.pttl(key)) <= ttl_ms
    finally:
        client.close()


def test_the_keepalive_renews_only_and_says_once_per_outage_that_redis_is_gone(
    unix_redis: UnixRedis,
) -> None:
    ttl_ms = 60_000
    key = worker_key("host:1:keepalive")
    client = Counting(blocking_client(Settings(redis_url=unix_redis.url, redis_timeout=1.0)))
    keepalive = Keepalive(client, "host:1:keepalive", 0.02, ttl_ms)
    with unix_redis.client() as admin:
        admin.hset(key, "id", "host:1:keepalive")
        admin.pexpire(key, 10 * ttl_ms)
    with capture_logs() as logs:
        keepalive.start()
        try:
            wait_until(lambda: _renewed(unix_redis, key, ttl_ms), what="the TTL renewed")
            with unix_redis.client() as admin:
                admin.delete(key)
            wait_until(client.more(5), what="renewals after the removal")
            with unix_redis.client() as admin:
                assert admin.exists(key) == 0  # never brought back
            for outage in (1, 2):
                unix_redis.stop()
                wait_until(client.more(10), what="renewals during an outage")
                failed = [e for e in logs if e["event"] == "worker.heartbeat_failed"]
                assert len(failed) == outage  # once per outage, however many renewals failed
                assert failed[-1]["keepalive"] is True
                assert failed[-1]["worker_id"] == "host:1:keepalive"
                assert failed[-1]["log_level"] == "warning"
                unix_redis.start()  # empty: nothing is persisted
                with unix_redis.client() as admin:
                    admin.hset(key, "id", "host:1:keepalive")
                    admin.pexpire(key, 10 * ttl_ms)
                wait_until(lambda: _renewed(unix_redis, key, ttl_ms), what="renewals resumed")
        finally:
            keepalive.stop(5.0)
    assert not any(t.name == "asyncjobs.keepalive" for t in threading.enumerate())


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel", password="s3cret") as started:
        yield started


def test_the_keepalive_client_follows_the_master_the_sentinels_name_after_a_failover(
    sentinels: SentinelSet,
) -> None:
    settings = Settings(redis_url=sentinels.url(db=3), redis_timeout=1.0)
    client = blocking_client(settings)
    try:
        client.set("registration", "x")
        # On the replica too (WAIT within the client's one-second socket timeout).
        wait_until(lambda: client.wait(1, 500) == 1, what="the key on the replica")
        old_master = sentinels.master_address()
        sentinels.kill_master()

        def renewed_on_the_new_master() -> bool:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.pexpire("registration", 60_000):
                    port = int(client.info("server")["tcp_port"])
                    return port != old_master[1] if old_master else False
            return False

        wait_until(renewed_on_the_new_master, within=60, what="a renewal on the new master")
        assert sentinels.master_address() not in (None, old_master)
        assert int(client.info("server")["tcp_port"]) == sentinels.master_address()[1]
        assert client.get("registration") == b"x"  # the database of the URL: 3
        assert client.connection_pool.connection_kwargs["db"] == 3
    finally:
        client.close()
