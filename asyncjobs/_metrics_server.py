"""A worker's HTTP endpoint on ``ASYNCJOBS_METRICS_PORT``: ``/metrics``, ``/healthz``, ``/readyz``.

It is served from threads of its own (the standard library's threading HTTP
server), never from the worker's event loop, so that it still answers when the
loop is blocked, and says so:

- ``/healthz``: 200 ``ok`` while the event loop answers and the claim loop is
  claiming. 503, with one line saying why, when the loop has not ticked for
  longer than the health window (it ticks every quarter of it), or the claim loop
  has neither claimed nor polled for longer (unless every slot is busy, when
  waiting is its job), or the worker is stopping or has not started. The window
  is three heartbeats or three poll delays, whichever is longer (6 s by default):
  the registration's lifetime, which the keepalive thread renews for a blocked
  loop, so this endpoint is what reports one.
- ``/readyz``: 200 ``ready`` once Redis and, if ``ASYNCJOBS_DATABASE_URL`` is set,
  PostgreSQL answered (checked from the worker's loop, every second until both
  did; it stays 200 afterwards: Redis outages are ridden out, not a reason to
  take the worker out); 503 before, saying which one was not reached and why.
- ``/metrics``: :data:`asyncjobs.metrics.registry` in Prometheus' text format.

:func:`open_server` is how a worker gets one: it is where the optional
prometheus-client is imported, and where a port in use becomes one
:class:`ConfigurationError` naming ``ASYNCJOBS_METRICS_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg

from ._core import Core
from ._exceptions import ConfigurationError
from ._metrics_hooks import Health

READY_RETRY_S = 1.0
"""How often a worker that has not reached Redis or PostgreSQL yet tries again."""

Render = Callable[[str | None], tuple[bytes, str]]


class MetricsServer:
    """The endpoint of one worker process, serving from the moment it is made.

    ``render`` gives the ``/metrics`` body and content type for an ``Accept`` header.
    :meth:`attach` (on the worker's event loop) starts the health tick and the
    readiness checks; what is in ``on_close`` runs once the server stopped.
    """

    def __init__(
        self,
        app: Core,
        port: int,
        render: Render,
        *,
        host: str = "",
    ) -> None:
        self.app = app
        self.health: Health | None = None
        self.not_ready: str | None = "the worker has not started yet (it starts once Redis answers)"
        self._render = render
        self.on_close: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"ASYNCJOBS_METRICS_PORT={port}: cannot serve metrics on that port "
                f"({exc.strerror or exc}); set it to a free port (each worker process on a "
                "host needs its own)"
            ) from None
        self._httpd.endpoint = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="asyncjobs.metrics", daemon=True
        )
        self._thread.start()

    def attach(self, health: Health) -> None:
        """Answer ``/healthz`` from ``health`` and start, on the running loop, the tick
        that shows the loop answers and the checks that make ``/readyz`` ready."""
        self.health = health
        health.loop_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._tick(health), name="asyncjobs.metrics.tick"),
            asyncio.create_task(self._reach(), name="asyncjobs.metrics.ready"),
        ]

    async def _tick(self, health: Health) -> None:
        interval = health.window / 4
        while True:
            health.loop_at = time.monotonic()
            await asyncio.sleep(interval)

    async def _reach(self) -> None:
        """Until Redis and (if configured) PostgreSQL answered once, say which did not."""
        checks = [("Redis", self._ping_redis)]
        if self.app.settings.database_url is not None:
            checks.append(("PostgreSQL", self._connect_postgres))
        for name, check in checks:
            self.not_ready = f"{name} not reached yet (checking)"
            while True:
                try:
                    await check()
                    break
                except Exception as exc:
                    self.not_ready = f"{name} not reached yet ({_said(exc)})"
                await asyncio.sleep(READY_RETRY_S)
        self.not_ready = None

    async def _ping_redis(self) -> None:
        async with asyncio.timeout(self.app.settings.redis_timeout):
            await (await self.app.redis()).ping()

    async def _connect_postgres(self) -> None:
        # A connection of its own, not the App's pool: no pool is left half-made, and
        # a failure is said here rather than logged at every try.
        settings = self.app.settings
        conn = await asyncpg.connect(settings.database_url, timeout=settings.database_timeout)
        await conn.close()

    def liveness(self) -> str | None:
        """Why the worker is not healthy, or ``None`` when it is."""
        health = self.health
        if health is None or health.loop_at is None:
            return "the worker has not started yet"
        if health.stopping():
            return "the worker is stopping"
        now = time.monotonic()
        quiet = now - health.loop_at
        if quiet > health.window:
            return f"the event loop is blocked: no tick for {quiet:.1f}s (limit {health.window:g}s)"
        polled = health.polled_at
        if not health.full and polled is not None and now - polled > health.window:
            if health.redis_down_since() is not None:
                # Redis is down: the worker reconnects by itself, and a restart would not
                # bring Redis back (logs and /metrics say redis.unavailable).
                return None
            return (
                f"the worker is not claiming: last claim or poll {now - polled:.1f}s ago "
                f"(limit {health.window:g}s)"
            )
        return None

    def metrics(self, accept: str | None) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type."""
        return self._render(accept)

    async def close(self) -> None:
        """Stop the tick and the checks, stop serving and free the port."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Stop serving and free the port (blocking; from any thread but the server's)."""
        if self._thread.is_alive():
            # The server notices a shutdown between two polls of its socket, half a second
            # apart: a connection wakes it at once instead.
            stopping = threading.Thread(target=self._httpd.shutdown)
            stopping.start()
            while stopping.is_alive():
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                stopping.join(0.01)
            self._thread.join()
        self._httpd.server_close()
        while self.on_close:
            self.on_close.pop()()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: MetricsServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = endpoint.metrics(self.headers.get("Accept"))
            self._answer(200, body, content_type)
        elif path == "/healthz":
            problem = endpoint.liveness()
            self._answer(503 if problem else 200, (problem or "ok").encode())
        elif path == "/readyz":
            problem = endpoint.not_ready
            self._answer(503 if problem else 200, (problem or "ready").encode())
        else:
            self._answer(404, b"not found: /metrics, /healthz or /readyz")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        if not body.endswith(b"\n") and content_type == "text/plain":
            body += b"\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request log line on stderr would break the worker's JSON log."""


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def open_server(app: Core) -> MetricsServer:
    """Count ``app``'s work in :mod:`asyncjobs.metrics` and serve it, with the health
    endpoints and the scrape-time gauges, on ``settings.metrics_port``.

    Raises :class:`ConfigurationError` when prometheus-client is not installed (naming
    the extra) or the port cannot be bound (naming ``ASYNCJOBS_METRICS_PORT``).
    """
    port = app.settings.metrics_port
    if port is None:
        raise ConfigurationError("ASYNCJOBS_METRICS_PORT is not set")
    try:
        from . import metrics
        from ._metrics_scrape import QueueCollector
    except ImportError as exc:
        raise ConfigurationError(f"ASYNCJOBS_METRICS_PORT is set, but {exc}") from exc
    metrics.enable(app)
    server = MetricsServer(app, port, metrics.exposition)
    gauges = QueueCollector(app)

    def stop_gauges() -> None:
        with contextlib.suppress(KeyError):
            metrics.registry.unregister(gauges)
        gauges.close()

    with contextlib.suppress(ValueError):  # another worker in this process reads them already
        metrics.registry.register(gauges)
    server.on_close.append(stop_gauges)
    return server
