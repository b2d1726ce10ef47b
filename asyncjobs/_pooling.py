"""Whether a PostgreSQL URL goes through a pooler in transaction mode (PgBouncer's
``pool_mode = transaction``), and what asyncjobs does differently then.

Through a transaction pooler, each transaction of one client connection may run on
a different server process. Three things need a session of their own and break:

- server-side prepared statements that outlive a transaction (asyncpg's statement
  cache): the App's pool then runs with ``statement_cache_size=0`` (asyncpg still
  prepares each query unnamed, within one round of the protocol, which poolers
  forward to one server);
- ``LISTEN``: notifications would reach whichever client holds that server next.
  Flag changes are then heard over ``ASYNCJOBS_DATABASE_LISTEN_URL`` (a direct
  connection) or, without one, only the flag TTL bounds how long a change takes;
- session advisory locks (exclusive jobs): the lock pool uses
  ``ASYNCJOBS_DATABASE_LISTEN_URL``; without one an exclusive job is refused with
  a :class:`~asyncjobs.ConfigurationError` naming that setting, never run unlocked.
  The refusal is not retried (the next try would meet the same settings): the job
  becomes a dead letter, to retry once the setting is there.

Migrations (one transaction, a transaction-scoped advisory lock), flag writes,
dead letters and reconcilers (a cursor inside a transaction) work through it.

The mode comes from ``ASYNCJOBS_DATABASE_POOL_MODE``: ``auto`` (the default) asks
the server when the App's pool opens, so a user who does not say it is still
protected: one query on the pool's first connection tells a direct connection
(:func:`behind_pooler`), and only behind a pooler do two probe connections tell
its mode (:func:`transaction_pooled`). ``session`` or ``transaction`` says it and
skips both; say ``transaction`` for a pooler that passes on the server's own
backend key (none of the common ones does), which the first check takes for a
direct connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg

LISTEN_URL_VAR = "ASYNCJOBS_DATABASE_LISTEN_URL"
_PROBE_ROUNDS = 2
_PID = "SELECT pg_backend_pid()"


@dataclass(frozen=True, slots=True)
class Pooling:
    """How the App reaches PostgreSQL through ``ASYNCJOBS_DATABASE_URL``."""

    transaction: bool
    """Each transaction may run on another server process (a transaction pooler)."""
    source: str
    """``"detected"`` (the probe said so) or ``"configured"`` (the setting said so)."""


async def behind_pooler(conn: asyncpg.Connection, seconds: float) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler, in any mode: the backend key
    it was given at connect (a pooler makes up its own) names another process than the
    server process that answers. One query; a direct connection needs no more."""
    return bool(conn.get_server_pid() != await conn.fetchval(_PID, timeout=seconds))


async def transaction_pooled(url: str, seconds: float) -> bool:
    """Whether ``url`` reaches PostgreSQL through a pooler in transaction mode.

    A direct connection is told by :func:`behind_pooler`. Behind a pooler, a second
    probe connection: ``a`` reads its server's pid, then ``b`` holds a transaction open
    and reads its own, then ``a`` reads its pid again. In a session of its own ``a``
    keeps one server process and ``b`` has another; through a transaction pooler ``b``
    is handed the server ``a`` just released (PgBouncer's default reuses the last one),
    or ``a`` lands elsewhere. Two rounds, in case a busy pooler's other clients take
    the server in between. Errors propagate (asyncpg's and ``OSError``/``TimeoutError``).
    """
    a = b = None
    try:
        a = await asyncpg.connect(url, timeout=seconds, statement_cache_size=0)
        if not await behind_pooler(a, seconds):
            return False
        b = await asyncpg.connect(url, timeout=seconds, statement_cache_size=0)
        for _ in range(_PROBE_ROUNDS):
            first = await a.fetchval(_PID, timeout=seconds)
            async with b.transaction():
                if await b.fetchval(_PID, timeout=seconds) == first:
                    return True
                # A pooler with no free server would make ``a`` wait for ``b``: run it
                # alongside, and let ``b`` go after a while rather than deadlock.
                again = asyncio.ensure_future(a.fetchval(_PID, timeout=seconds))
                await asyncio.wait([again], timeout=min(seconds, 1.0))
            if await again != first:
                return True
        return False
    finally:
        for conn in (a, b):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), seconds)


def session_needed_message(what: str) -> str:
    """The one line for something that needs a session, asked for through a transaction
    pooler with no direct URL configured."""
    return (
        f"{what} needs a PostgreSQL session of its own, and ASYNCJOBS_DATABASE_URL goes "
        "through a pooler in transaction mode (PgBouncer's pool_mode = transaction); set "
        f"{LISTEN_URL_VAR} to a direct connection to PostgreSQL (its own host and port, not "
        "the pooler's) or to a session-mode pool"
    )


def pooled_listen_url_message(url: str) -> str:
    """The one line for an ``ASYNCJOBS_DATABASE_LISTEN_URL`` that is itself transaction-pooled."""
    return (
        f"{LISTEN_URL_VAR} ({url}) goes through a pooler in transaction mode (two "
        "transactions ran on different server processes), but it is there for what needs "
        "a session of its own (flag notifications, locks of exclusive jobs); point it at "
        "PostgreSQL directly (its own host and port, not the pooler's) or at a session-mode "
        "pool"
    )
