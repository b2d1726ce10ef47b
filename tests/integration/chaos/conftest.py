"""Servers of a chaos test's own, which it may freeze (SIGSTOP), kill and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncjobs._services import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    with contextlib.suppress(ProcessLookupError):
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    # Not under tmp_path: PostgreSQL runs as an unprivileged user when the suite runs as
    # root, and pytest's directories are root's alone.
    directory = Path(tempfile.mkdtemp(prefix="asyncjobs-chaos-"))
    os.chmod(directory, 0o755)
    server = EmbeddedPostgres(directory / "pg")
    try:
        server.start()
        yield server
    finally:
        _signal_tree(server, signal.SIGCONT)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _signal_tree(server: EmbeddedPostgres, sig: signal.Signals) -> None:
    pidfile = server.directory / "data" / "postmaster.pid"
    if not pidfile.exists():
        return
    for pid in _descendants(int(pidfile.read_text().split()[0])):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def frozen_postgres(server: EmbeddedPostgres) -> Iterator[None]:
    """Every process of the cluster stopped (SIGSTOP), resumed on exit."""
    _signal_tree(server, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal_tree(server, signal.SIGCONT)


@contextlib.contextmanager
def frozen_redis(server: EmbeddedRedis) -> Iterator[None]:
    """The Redis server stopped (SIGSTOP), resumed on exit."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
