"""Schema migrations, and the `asyncjobs` command in a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from asyncjobs import App, Settings
from asyncjobs._schema import applied, migrations
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


def test_help_lists_the_environment_variables() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for var in ("ASYNCJOBS_REDIS_URL", "ASYNCJOBS_DATABASE_URL", "ASYNCJOBS_IMPORTS"):
        assert var in result.stdout


def test_cli_migrate_in_a_subprocess(database_url: str) -> None:
    env = {"ASYNCJOBS_DATABASE_URL": database_url}
    first = cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_runtime_schema" in first.stdout
    again = cli("migrate", env=env)
    assert again.returncode == 0
    assert "schema is up to date" in again.stdout


def test_cli_migrate_without_a_database_url_says_how_to_set_one() -> None:
    result = cli("migrate")
    assert result.returncode == 1
    assert "ASYNCJOBS_DATABASE_URL is not set" in result.stderr
    assert "asyncjobs dev" in result.stderr


def test_cli_rejects_a_malformed_url_naming_the_variable() -> None:
    result = cli("migrate", env={"ASYNCJOBS_DATABASE_URL": "mysql://nope"})
    assert result.returncode != 0
    assert "ASYNCJOBS_DATABASE_URL must start with postgres:// or postgresql://" in result.stderr


def test_cli_jobs_list_shows_registered_jobs() -> None:
    result = cli("jobs", "list", env={"ASYNCJOBS_IMPORTS": "tests.workerjobs"})
    assert result.returncode == 0, result.stderr
    assert "invoice_job" in result.stdout
    assert "tests.workerjobs.InvoiceJob" in result.stdout
    assert "record_args" in result.stdout


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


@pytest.mark.slow
def test_cli_dev_starts_services_and_prints_their_variables() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "dev"],
        env=base,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("# Ctrl-C"):
                break
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert set(exports) == {"ASYNCJOBS_REDIS_URL", "ASYNCJOBS_DATABASE_URL"}
        check = cli("check", env=exports)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        proc.terminate()
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0
