"""What changes flags and argument rules in PostgreSQL, each change with its audit row.

The operator's side of :class:`~asyncjobs._flags.FlagStore`, which checks the input,
updates its own cache and logs the changes it makes: each function here runs one
transaction on the connection it is given, writes the change and its row in
``asyncjobs.flag_history``, and notifies the other processes on ``asyncjobs_flags``.
:func:`end_timed_stops` ends the timed stops that are over, skipping rows another
process is ending (``FOR UPDATE SKIP LOCKED``), so each end is recorded exactly once,
by the actor ``schedule``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog

from . import _logs as logs
from ._naming import STOP_FLAG_PREFIX
from ._rules import Condition, Rule

CHANNEL = "asyncjobs_flags"
RELOAD = "*"
"""The notification that asks every process to load the snapshot again (a rule, or a
timed stop, changed): a payload without ``name:value``, which every version reloads on."""
SCHEDULE = "schedule"
"""The actor of a timed stop's end in the history."""
_NOTIFY_SQL = "SELECT pg_notify($1, $2)"
_log = structlog.get_logger("asyncjobs.flags")

_SET_SQL = """
INSERT INTO asyncjobs.flags (name, enabled, updated_by, reason, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE
SET enabled = EXCLUDED.enabled, updated_at = now(), updated_by = EXCLUDED.updated_by,
    reason = EXCLUDED.reason, expires_at = EXCLUDED.expires_at
"""
_HISTORY_SQL = """
INSERT INTO asyncjobs.flag_history (name, old_value, new_value, actor, reason, rule, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_END_FLAGS_SQL = """
SELECT name, updated_by, reason, expires_at FROM asyncjobs.flags
WHERE enabled AND expires_at <= now() FOR UPDATE SKIP LOCKED
"""
_END_RULES_SQL = """
DELETE FROM asyncjobs.flag_rules
WHERE id IN (SELECT id FROM asyncjobs.flag_rules WHERE expires_at <= now()
             FOR UPDATE SKIP LOCKED)
RETURNING job, rule, created_by, reason, expires_at
"""


def rule_of_row(row: Any) -> Rule:
    """A :class:`Rule` from a row of ``asyncjobs.flag_rules``."""
    data = dict(row)
    data.pop("ended", None)
    data.pop("db_now", None)
    conds = json.loads(data.pop("conditions"))
    data["conditions"] = tuple(Condition.from_json(c) for c in conds)
    data["text"] = data.pop("rule")
    return Rule(**data)


def _schedule_reason(by: str, reason: str | None, ended: datetime) -> str:
    why = f": {reason}" if reason else ""
    return f"timed stop ended at {ended:%Y-%m-%d %H:%M:%S} UTC (set by {by}{why})"


async def set_flag(
    conn: Any, name: str, value: bool, who: str, reason: str | None, ends: datetime | None
) -> tuple[bool | None, datetime | None]:
    """Set flag ``name`` to ``value`` (on until ``ends``, if given), audited and notified,
    unless it is so already. Returns what it was: its value (``None``: it did not exist)
    and, if it was on, its end."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT enabled, expires_at FROM asyncjobs.flags WHERE name = $1 FOR UPDATE", name
        )
        old = None if row is None else row["enabled"]
        old_end = None if row is None or not old else row["expires_at"]
        if old is value and old_end == ends:
            return old, old_end
        await conn.execute(_SET_SQL, name, value, who, reason, ends)
        await conn.execute(_HISTORY_SQL, name, old, value, who, reason, None, ends)
        await conn.execute(_NOTIFY_SQL, CHANNEL, f"{name}:{int(value)}")
        if ends is not None or old_end is not None:
            await conn.execute(_NOTIFY_SQL, CHANNEL, RELOAD)
    return old, old_end


async def add_rule(
    conn: Any,
    job: str,
    conditions: str,
    text: str,
    who: str,
    reason: str | None,
    ends: datetime | None,
) -> bool | None:
    """Add the rule ``text`` of ``job`` (``conditions`` as JSON), or give an existing one
    the end ``ends``; audited and notified. Returns ``None`` when it was added, ``False``
    when its end changed, ``True`` when it was there already as asked (nothing written)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, expires_at FROM asyncjobs.flag_rules WHERE job = $1 AND rule = $2 "
            "FOR UPDATE",
            job,
            text,
        )
        if row is not None and row["expires_at"] == ends:
            return True
        if row is None:
            added = await conn.fetchval(
                "INSERT INTO asyncjobs.flag_rules "
                "(job, conditions, rule, created_by, reason, expires_at) "
                "VALUES ($1, $2::jsonb, $3, $4, $5, $6) "
                "ON CONFLICT (job, rule) DO NOTHING RETURNING id",
                *(job, conditions, text, who, reason, ends),
            )
            if added is None:  # the same rule, added at the same moment by someone else
                return True
        else:
            await conn.execute(
                "UPDATE asyncjobs.flag_rules SET expires_at = $2, created_by = $3, reason = $4 "
                "WHERE id = $1",
                *(row["id"], ends, who, reason),
            )
        old = None if row is None else True
        flag = STOP_FLAG_PREFIX + job
        await conn.execute(_HISTORY_SQL, flag, old, True, who, reason, text, ends)
        await conn.execute(_NOTIFY_SQL, CHANNEL, RELOAD)
    return None if row is None else False


async def remove_rule(conn: Any, job: str, text: str, who: str, reason: str | None) -> bool:
    """Remove the rule ``text`` of ``job`` (one in force), audited and notified; whether
    there was one."""
    async with conn.transaction():
        gone = await conn.fetchval(
            "DELETE FROM asyncjobs.flag_rules WHERE job = $1 AND rule = $2 "
            "AND (expires_at IS NULL OR expires_at > now()) RETURNING id",
            job,
            text,
        )
        if gone is None:
            return False
        flag = STOP_FLAG_PREFIX + job
        await conn.execute(_HISTORY_SQL, flag, True, False, who, reason, text, None)
        await conn.execute(_NOTIFY_SQL, CHANNEL, RELOAD)
    return True


async def end_timed_stops(conn: Any) -> None:
    """Turn off the flags and delete the rules whose timed stop is over, each recorded
    once in the history by the actor ``schedule`` and announced (``flag.changed``
    here, a notification to the others). Rows another process is ending are skipped."""
    async with conn.transaction():
        flags = await conn.fetch(_END_FLAGS_SQL)
        for f in flags:
            why = _schedule_reason(f["updated_by"], f["reason"], f["expires_at"])
            await conn.execute(_SET_SQL, f["name"], False, SCHEDULE, why, None)
            await conn.execute(_HISTORY_SQL, f["name"], True, False, SCHEDULE, why, None, None)
            await conn.execute(_NOTIFY_SQL, CHANNEL, f"{f['name']}:0")
        rules = await conn.fetch(_END_RULES_SQL)
        for r in rules:
            why = _schedule_reason(r["created_by"], r["reason"], r["expires_at"])
            flag = STOP_FLAG_PREFIX + r["job"]
            await conn.execute(_HISTORY_SQL, flag, True, False, SCHEDULE, why, r["rule"], None)
        if rules:
            await conn.execute(_NOTIFY_SQL, CHANNEL, RELOAD)
    for f in flags:
        _log.info(
            logs.FLAG_CHANGED,
            flag=f["name"],
            old=True,
            new=False,
            actor=SCHEDULE,
            reason=_schedule_reason(f["updated_by"], f["reason"], f["expires_at"]),
        )
    for r in rules:
        _log.info(
            logs.FLAG_CHANGED,
            flag=STOP_FLAG_PREFIX + r["job"],
            rule=r["rule"],
            old=True,
            new=False,
            actor=SCHEDULE,
            reason=_schedule_reason(r["created_by"], r["reason"], r["expires_at"]),
        )
