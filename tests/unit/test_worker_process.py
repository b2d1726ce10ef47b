"""A worker, or an App, that cannot reach its servers says so at once (no server here)."""

from __future__ import annotations

import pytest

import asyncjobs
from asyncjobs import App
from asyncjobs.testing import free_port
from tests.conftest import run_module

IMPORTS = "tests.workerjobs"


def test_worker_without_redis_url_exits_at_once_saying_how_to_configure() -> None:
    result = run_module("arq", "asyncjobs.WorkerSettings", env={"ASYNCJOBS_IMPORTS": IMPORTS})
    assert result.returncode != 0
    assert "ASYNCJOBS_REDIS_URL is not set" in result.stderr
    assert "asyncjobs dev" in result.stderr


def test_worker_pointed_at_nothing_exits_at_once_saying_so() -> None:
    env = {
        "ASYNCJOBS_IMPORTS": IMPORTS,
        "ASYNCJOBS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    result = run_module("arq", "asyncjobs.WorkerSettings", env=env)
    assert result.returncode != 0
    assert "nothing is listening at ASYNCJOBS_REDIS_URL" in result.stderr


async def test_unreachable_postgres_is_a_clear_error() -> None:
    dead = asyncjobs.Settings(
        database_url=f"postgresql://x@127.0.0.1:{free_port()}/db", database_timeout=1
    )
    async with App(dead) as app:
        with pytest.raises(asyncjobs.DatabaseUnavailableError, match="unreachable"):
            await app.db()
