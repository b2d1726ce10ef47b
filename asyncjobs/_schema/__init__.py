"""Versioned SQL migrations for the runtime's own tables, in the ``asyncjobs`` schema.

Files are named ``NNNN_name.sql`` and applied in order, each once, each in the
transaction that records it in ``asyncjobs.schema_migrations``. A transaction-
scoped advisory lock serialises concurrent ``migrate()`` calls, so several
processes may run it at once: one applies, the others find nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog

from .. import _logs as logs
from .._exceptions import MigrationError

# A fixed 64-bit advisory-lock key for migrations: the first 8 bytes of
# sha256("asyncjobs.migrate"), as a signed integer.
MIGRATION_LOCK_KEY = -3_130_031_592_944_591_093

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS asyncjobs;
CREATE TABLE IF NOT EXISTS asyncjobs.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_log = structlog.get_logger("asyncjobs.schema")


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Any) -> list[str]:
    """Apply pending migrations on an asyncpg connection; returns the names applied."""
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_BOOTSTRAP)
            done = {
                r[0] for r in await conn.fetch("SELECT version FROM asyncjobs.schema_migrations")
            }
            for migration in migrations():
                if migration.version in done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO asyncjobs.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
    except Exception as exc:
        if isinstance(exc, MigrationError):
            raise
        import asyncpg

        if isinstance(exc, asyncpg.PostgresError):
            raise MigrationError(f"migration failed: {type(exc).__name__}: {exc}") from exc
        raise
    for name in applied_now:
        _log.info(logs.MIGRATION_APPLIED, migration=name)
    return applied_now


async def applied(conn: Any) -> list[str]:
    """Names of the migrations recorded as applied (empty if none ever were)."""
    exists = await conn.fetchval("SELECT to_regclass('asyncjobs.schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version, name FROM asyncjobs.schema_migrations ORDER BY 1")
    return [f"{r[0]:04d}_{r[1]}" for r in rows]
