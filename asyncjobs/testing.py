"""Helpers for testing code that uses asyncjobs.

``capture()`` collects what the code under test enqueues, through the real client
chain, and runs it in process (``await jobs.run_all()``; see :mod:`asyncjobs._capture`).
``EmbeddedServices`` starts throwaway Redis and PostgreSQL, ``EmbeddedPgBouncer`` a
PgBouncer in transaction mode in front of one; ``WorkerProcess``
runs ``arq asyncjobs.WorkerSettings`` as a real subprocess and waits until it
is ready; ``ServiceProcess`` does the same for any command (a web app, say).
The pytest plugin (loaded by installing the package) gives the fixtures
``asyncjobs_services`` and ``asyncjobs_worker`` on top of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from ._capture import Capture, CapturedJob, CapturedJobHandle, capture
from ._embedded_pgbouncer import EmbeddedPgBouncer, find_pgbouncer
from ._exceptions import RunLimitError
from ._services import EmbeddedServices, free_port

__all__ = [
    "Capture",
    "CapturedJob",
    "CapturedJobHandle",
    "EmbeddedPgBouncer",
    "EmbeddedServices",
    "RunLimitError",
    "ServiceProcess",
    "WorkerProcess",
    "capture",
    "find_pgbouncer",
    "free_port",
]


class ServiceProcess:
    """A command run as a subprocess, its output (stdout and stderr) collected in ``lines``.

    ``env`` is added to the current environment. ``ready`` is the text whose
    appearance in the output means the service is up; :meth:`start` waits for
    it. ``new_session=True`` keeps a Ctrl-C at the terminal from reaching the
    process, so whoever started it stops it, in order. Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        ready: str | None = None,
        cwd: str | Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.new_session = new_session
        self.env = {**os.environ, **env}
        self.ready = ready
        self.cwd = cwd
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, *, wait_ready: float = 30.0) -> Self:
        """Start the command; with ``wait_ready`` and a ``ready`` text, wait for it."""
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait_ready and self.ready:
            self.wait_for(self.ready, timeout=wait_ready)
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return "\n".join(self.lines)

    def wait_for(self, text: str, *, timeout: float = 30.0, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the output, or raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(text in line for line in list(self.lines)) >= count:
                return
            if self.process is not None and self.process.poll() is not None:
                time.sleep(0.1)  # let the reader drain what is left
                if sum(text in line for line in list(self.lines)) >= count:
                    return
                code = self.process.returncode
                raise RuntimeError(
                    f"{self.argv[-1]} exited ({code}) before {text!r}:\n{self.output}"
                )
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} did not appear {count}x within {timeout}s:\n{self.output}")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process and wait; SIGKILL it if it does not stop in ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess(ServiceProcess):
    """``arq asyncjobs.WorkerSettings`` in a subprocess, logging JSON; ready at ``worker.started``.

    ``env`` is added to the current environment (``ASYNCJOBS_REDIS_URL``,
    ``ASYNCJOBS_IMPORTS`` ...); ``settings`` is the settings class arq is given.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        settings: str = "asyncjobs.WorkerSettings",
        cwd: str | Path | None = None,
        new_session: bool = False,
    ) -> None:
        super().__init__(
            [sys.executable, "-m", "arq", settings],
            {"ASYNCJOBS_LOG_FORMAT": "json", **env},
            ready="worker.started",
            cwd=cwd,
            new_session=new_session,
        )
        self.settings = settings
