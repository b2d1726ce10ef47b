"""The ``asyncjobs`` command (also ``python -m asyncjobs``): the operator's side."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .exceptions import AsyncJobsError
from .settings import environment_help

T = TypeVar("T")


def _epilog() -> str:
    width = max(len(name) for name, _ in environment_help())
    lines = [f"  {name.ljust(width)}  {text}" for name, text in environment_help()]
    return "\b\nEnvironment variables:\n" + "\n".join(lines)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn asyncjobs' errors into a one-line message and exit code 1."""
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(epilog=_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asyncjobs")
def main() -> None:
    """asyncjobs: background jobs on arq, Redis and PostgreSQL.

    Run a worker with `arq asyncjobs.WorkerSettings`; use these commands to
    operate it.
    """


@main.command()
def migrate() -> None:
    """Create or update asyncjobs' tables in ASYNCJOBS_DATABASE_URL (idempotent)."""
    from .app import App

    async def go() -> list[str]:
        async with App() as app:
            return await app.migrate()

    applied = _run(go)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("schema is up to date")


@main.command()
def check() -> None:
    """Check that Redis and PostgreSQL are reachable with the current settings."""
    from .app import App

    async def go() -> list[tuple[str, str]]:
        report = []
        async with App() as app:
            redis = await app.redis()
            try:
                async with asyncio.timeout(app.settings.redis_timeout):
                    await redis.ping()
                report.append(("redis", "ok"))
            except Exception as exc:
                report.append(("redis", f"FAILED: {type(exc).__name__}: {exc}"))
            if app.settings.database_url is None:
                report.append(("postgres", "not configured (ASYNCJOBS_DATABASE_URL)"))
            else:
                try:
                    pool = await app.db()
                    await pool.fetchval("SELECT 1")
                    report.append(("postgres", "ok"))
                except Exception as exc:
                    report.append(("postgres", f"FAILED: {exc}"))
        return report

    report = _run(go)
    for service, status in report:
        click.echo(f"{service:9} {status}")
    if any(status.startswith("FAILED") for _, status in report):
        sys.exit(1)


@main.group()
def jobs() -> None:
    """Registered jobs (from the modules in ASYNCJOBS_IMPORTS)."""


@jobs.command("list")
def jobs_list() -> None:
    """List the registered jobs with their queue and options."""
    from .app import get_app
    from .settings import Settings
    from .worker import import_job_modules

    try:
        settings = Settings.from_env()
        import_job_modules(settings.imports)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc
    registry = get_app().registry
    if not len(registry):
        click.echo("no jobs registered; set ASYNCJOBS_IMPORTS to the modules that define them")
        return
    click.echo(f"{'job':32} {'queue':16} {'timeout':>8}  defined in")
    for spec in registry:
        queue = spec.queue or settings.queue_name
        timeout = "-" if spec.timeout is None else f"{spec.timeout:g}s"
        click.echo(f"{spec.name:32} {queue:16} {timeout:>8}  {spec.origin}")


@main.command()
@click.option("--migrate/--no-migrate", default=True, help="Apply the schema once started.")
def dev(migrate: bool) -> None:
    """Start throwaway Redis and PostgreSQL and print the variables that point at them.

    Runs until Ctrl-C, then stops both servers and deletes their data.
    """
    from ._services import EmbeddedServices, wait_forever

    try:
        services = EmbeddedServices().start()
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        if migrate:
            from .app import App
            from .settings import Settings

            async def go() -> Any:
                async with App(Settings(**_settings_kwargs(services.environ))) as app:
                    return await app.migrate()

            _run(go)
        click.echo("# Embedded Redis and PostgreSQL are running. In another shell:")
        for key, value in services.environ.items():
            click.echo(f"export {key}={value}")
        click.echo("# Ctrl-C stops them and deletes their data.")
        sys.stdout.flush()
        wait_forever()
    finally:
        services.stop()


def _settings_kwargs(environ: dict[str, str]) -> dict[str, Any]:
    return {
        "redis_url": environ.get("ASYNCJOBS_REDIS_URL"),
        "database_url": environ.get("ASYNCJOBS_DATABASE_URL"),
    }
