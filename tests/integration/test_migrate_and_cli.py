"""Schema migrations, and the `asyncjobs` command in a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import asyncpg
import pytest

from asyncjobs import App, Settings
from asyncjobs._schema import applied, migrations
from asyncjobs.testing import ServiceProcess
from tests.conftest import ROOT, cli


async def test_migrate_is_idempotent(app: App) -> None:
    first = await app.migrate()
    assert first == [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert await app.migrate() == []
    pool = await app.db()
    async with pool.acquire() as conn:
        assert await applied(conn) == first


async def test_concurrent_migrations_from_many_connections_apply_each_once(
    database_url: str,
) -> None:
    apps = [App(Settings(database_url=database_url)) for _ in range(6)]
    try:
        results = await asyncio.gather(*(a.migrate() for a in apps))
    finally:
        await asyncio.gather(*(a.close() for a in apps))
    applied_lists = [r for r in results if r]
    assert len(applied_lists) == 1  # one applied, the others found nothing to do
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT version FROM asyncjobs.schema_migrations")
    finally:
        await conn.close()
    assert sorted(r["version"] for r in rows) == [m.version for m in migrations()]


def test_cli_migrate_in_a_subprocess(database_url: str) -> None:
    env = {"ASYNCJOBS_DATABASE_URL": database_url}
    first = cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_runtime_schema" in first.stdout
    again = cli("migrate", env=env)
    assert again.returncode == 0
    assert "schema is up to date" in again.stdout


def test_cli_check_reports_each_service(redis_url: str, database_url: str) -> None:
    ok = cli(
        "check", env={"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "redis     ok" in ok.stdout
    assert "postgres  ok" in ok.stdout
    from asyncjobs.testing import free_port

    bad = cli(
        "check",
        env={
            "ASYNCJOBS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "ASYNCJOBS_REDIS_TIMEOUT": "0.5",
        },
    )
    assert bad.returncode == 1
    assert "redis     FAILED" in bad.stdout


@pytest.mark.parametrize("option", ["--port-redis", "--port-postgres"])
def test_cli_dev_on_a_port_another_program_listens_on_says_so_and_starts_nothing(
    option: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("dev", option, str(port))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"Error: {'Redis' if option == '--port-redis' else 'PostgreSQL'}'s port {port} is in "
        f"use by another program: choose another with {option}, or leave {option} out for "
        "a free one"
    ]


@pytest.mark.slow
def test_cli_dev_starts_services_and_prints_their_variables() -> None:
    dev = ServiceProcess([sys.executable, "-m", "asyncjobs", "dev"], {}, ready="# Ctrl-C", cwd=ROOT)
    dev.env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    try:
        dev.start(wait_ready=120)  # the servers started, their variables printed
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in dev.lines
            if line.startswith("export ")
        )
        assert set(exports) == {"ASYNCJOBS_REDIS_URL", "ASYNCJOBS_DATABASE_URL"}
        check = cli("check", env=exports)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        code = dev.stop(timeout=30)
    assert code == 0, dev.output


def test_a_command_group_without_a_command_prints_its_help_listing_them() -> None:
    done = cli("jobs")
    assert done.returncode == 2  # as click: no command was given
    assert done.stderr == ""
    assert done.stdout.startswith("Usage: ")
    for command in ("disable", "enable", "list", "throttle", "cancel"):
        assert f"\n  {command} " in done.stdout
