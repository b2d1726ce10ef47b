"""The provisioning service's own tables: the state that reconcilers read.

A database row is the truth about a database; jobs move it from one state to
the next, and a job that finds its row already moved on does nothing:

    pending --create_database_job--> ready --(DELETE)--> deleting --cleanup--> deleted

``provisioned`` records each time the provisioning work really ran and
``create_attempts`` each time the job started, so duplicates (a reconciler's
copy, a retry) show up as attempts without a second effect.
"""

from __future__ import annotations

from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS databases (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    owner_email text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'ready', 'deleting', 'deleted')),
    create_attempts integer NOT NULL DEFAULT 0,
    notify_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    ready_at timestamptz,
    notified_at timestamptz,
    deleted_at timestamptz
);
CREATE INDEX IF NOT EXISTS databases_by_state ON databases (state);
CREATE TABLE IF NOT EXISTS provisioned (
    database_id bigint NOT NULL REFERENCES databases (id),
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS backups (
    id bigserial PRIMARY KEY,
    database_id bigint NOT NULL REFERENCES databases (id),
    taken_at timestamptz NOT NULL DEFAULT now()
);
"""


async def create_schema(pool: Any) -> None:
    """Create the tables if they are missing (idempotent)."""
    await pool.execute(SCHEMA)


async def stats(pool: Any) -> dict[str, int]:
    """Counts of rows by state, notifications, effects, attempts and backups."""
    row = await pool.fetchrow(
        """
        SELECT count(*) AS created,
               count(*) FILTER (WHERE state = 'pending') AS pending,
               count(*) FILTER (WHERE state = 'ready') AS ready,
               count(*) FILTER (WHERE state = 'deleting') AS deleting,
               count(*) FILTER (WHERE state = 'deleted') AS deleted,
               count(*) FILTER (WHERE notified_at IS NOT NULL) AS notified,
               count(*) FILTER (WHERE state = 'ready' AND notified_at IS NULL) AS unnotified,
               count(*) FILTER (WHERE notify_error IS NOT NULL) AS notify_failed,
               coalesce(sum(create_attempts), 0) AS create_attempts,
               (SELECT count(*) FROM provisioned) AS provisioned,
               (SELECT count(DISTINCT database_id) FROM provisioned) AS provisioned_databases,
               (SELECT count(*) FROM backups) AS backups
        FROM databases
        """
    )
    return {key: int(value) for key, value in row.items()}


async def _main() -> None:
    import asyncjobs

    async with asyncjobs.App() as app:
        await create_schema(await app.db())
    print("the provisioning example's tables are in place")


if __name__ == "__main__":  # python -m examples.provisioning.schema
    import asyncio

    asyncio.run(_main())
