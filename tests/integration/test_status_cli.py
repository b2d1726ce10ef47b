"""`asyncjobs status` and the `--json` lists, against real servers, a real worker and the CLI.

The known state: on ``billing`` (no worker reads it) four ready jobs, one of them
due five minutes ago, and one deferred; on ``arq:queue`` one job a live worker
runs and two deferred; a queue only that worker reads; a dead letter; stopped
jobs, an orphaned flag and a plain flag; a stopped reconciler.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from asyncjobs import App, Settings
from asyncjobs._liveness import beat, registration, worker_jobs_key, worker_key
from asyncjobs._status import queue_stats
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT, cli
from tests.corejobs import billing_job, cancellable, count_once, fails_twice, stamp
from tests.helpers import eventually
from tests.recjobs import pending_rows  # noqa: F401 -- registers the reconciler

PAST = timedelta(minutes=5)


def _json(*args: str, env: dict[str, str]) -> Any:
    """Run the command; its whole stdout must be one JSON document."""
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _section(lines: list[str], header: str) -> list[str]:
    """The indented lines under ``header`` in the human output."""
    start = lines.index(header) + 1
    end = start
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return lines[start:end]


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


async def _known_state(app: App, redis: aioredis.Redis) -> float:
    """Build the state the module docstring describes; returns when the past job became due."""
    await app.migrate()
    due = datetime.now(UTC) - PAST
    for n in range(3):
        assert await app.enqueue(billing_job, n)
    assert await app.enqueue(billing_job, 3, _defer_until=due)
    assert await app.enqueue(billing_job, 4, _defer_by=600)
    assert await app.enqueue(count_once, 1, _defer_by=3600)
    assert await app.enqueue(count_once, 2, _defer_by=3600)
    assert await app.enqueue(cancellable, 1)
    assert await app.enqueue(fails_twice, 7)
    await app.flags.enable("disable_stamp", actor="ops", reason="maintenance")
    await app.flags.enable("disable_pending_rows", actor="ops", reason="noisy")
    await app.flags.enable("disable_gone_job", actor="ops")
    await app.flags.enable("beta_feature", actor="ops")
    await app.flags.disable("beta_feature", actor="ops", reason="done")
    assert await app.enqueue(stamp, 1) is None  # rejected by the kill switch, counted
    await app.flags.list()  # writes the rejection count
    return due.timestamp()


async def _settled(app: App, redis: aioredis.Redis) -> None:
    """Wait until the worker runs the long job, dead-lettered the failing one and wrote back."""

    async def ready() -> bool:
        return (
            await redis.llen("cancellable-started") == 1
            and len(await app.dead.list()) == 1
            and await redis.zcard("arq:queue") == 3  # the running job and two deferred
        )

    await eventually(ready, what="the worker ran cancellable and dead-lettered fails_twice")


@pytest.mark.slow  # starts a worker process
async def test_status_and_every_json_list_match_a_known_state(
    app: App, redis: aioredis.Redis, worker_env: dict[str, str]
) -> None:
    due = await _known_state(app, redis)
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.corejobs,tests.recjobs"}
    worker_only = {
        **worker_env,
        "ASYNCJOBS_IMPORTS": "tests.corejobs",
        "ASYNCJOBS_QUEUES": "arq:queue,extra:only",
        "ASYNCJOBS_SHUTDOWN_GRACE": "0",
    }
    with WorkerProcess(worker_only, cwd=ROOT) as worker:
        await _settled(app, redis)
        before = time.time()
        doc = _json("status", "--json", env=env)
        after = time.time()
        human = cli("status", env=env)
        assert worker.process is not None
        pid = worker.process.pid

    assert set(doc) == {
        "at",
        "queues",
        "workers",
        "postgres",
        "dead_letters",
        "stopped_jobs",
        "rules",
        "paused_queues",
        "throttles",
        "reconcilers",
        "outbox",
    }
    assert doc["outbox"] == {"pending": 0, "oldest_age_s": None}
    assert before - 1 <= _when(doc["at"]).timestamp() <= after + 1
    queues = {q["name"]: q for q in doc["queues"]}
    assert [q["name"] for q in doc["queues"]] == ["arq:queue", "billing", "extra:only"]
    billing_age = queues["billing"].pop("oldest_ready_age_s")
    assert before - due - 1 <= billing_age <= after - due + 1
    assert queues["billing"] == {
        "name": "billing",
        "ready": 4,
        "deferred": 1,
        "running": 0,
        "paused": False,
    }
    # The running job is due and still in its queue (as in arq), yet neither ready nor oldest.
    assert queues["arq:queue"] == {
        "name": "arq:queue",
        "ready": 0,
        "deferred": 2,
        "running": 1,
        "oldest_ready_age_s": None,
        "paused": False,
    }
    assert queues["extra:only"] == {
        "name": "extra:only",
        "ready": 0,
        "deferred": 0,
        "running": 0,
        "oldest_ready_age_s": None,
        "paused": False,
    }
    (w,) = doc["workers"]
    assert (w["pid"], w["queues"], w["running"], w["max_jobs"]) == (
        pid,
        ["arq:queue", "extra:only"],
        1,
        500,
    )
    assert _when(w["started"]) <= _when(w["heartbeat"]) <= _when(doc["at"])
    assert doc["postgres"] == {"available": True, "error": None}
    assert doc["dead_letters"] == [{"job_name": "fails_twice", "count": 1}]
    assert (doc["paused_queues"], doc["throttles"]) == ([], [])
    stopped = doc["stopped_jobs"]
    assert [(s["job"], s["flag"], s["stopped_by"], s["reason"]) for s in stopped] == [
        ("gone_job", "disable_gone_job", "ops", None),
        ("pending_rows", "disable_pending_rows", "ops", "noisy"),
        ("stamp", "disable_stamp", "ops", "maintenance"),
    ]
    assert all(_when(s["stopped_at"]) <= _when(doc["at"]) for s in stopped)
    assert doc["reconcilers"] == [
        {
            "name": "pending_rows",
            "job": "create_database",
            "schedule": "every 0:00:02",
            "flag": "disable_pending_rows",
            "stopped": True,
        }
    ]

    # The same numbers for people.
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    queue_rows = {x.split()[0]: x.split()[1:] for x in lines[1 : lines.index("")]}
    assert queue_rows["billing"][:3] == ["4", "1", "0"]
    assert queue_rows["billing"][3].startswith("5m")  # about 300 s
    assert queue_rows["arq:queue"] == ["0", "2", "1", "-", "running"]
    assert queue_rows["extra:only"] == ["0", "0", "0", "-", "running"]
    (worker_line,) = _section(lines, "workers alive: 1")
    assert f":{pid}:" in worker_line
    assert "running 1/500" in worker_line
    assert [x.split() for x in _section(lines, "dead letters: 1")] == [["fails_twice", "1"]]
    stopped_lines = _section(lines, "stopped jobs: 3")
    assert [x.split()[0] for x in stopped_lines] == ["gone_job", "pending_rows", "stamp"]
    assert stopped_lines[2].endswith("by ops: maintenance")
    assert "outbox: 0 committed, not yet in Redis" in lines
    (reconciler_line,) = _section(lines, "reconcilers: 1")
    assert reconciler_line.split()[::4] == ["pending_rows", "STOPPED"]

    await _the_json_lists_match(app, env)


async def _the_json_lists_match(app: App, env: dict[str, str]) -> None:
    jobs = {j["name"]: j for j in _json("jobs", "list", "--json", env=env)["jobs"]}
    assert jobs["billing_job"]["queue"] == "billing"
    assert jobs["count_once"] == {
        "name": "count_once",
        "queue": "arq:queue",
        "timeout_s": None,
        "stopped": False,
        "flag": "disable_count_once",
        "origin": "tests.corejobs.count_once",
        "schedule": None,
        "next_run": None,
        "rules": [],
    }
    assert jobs["stamp"]["stopped"] is True
    assert jobs["pending_rows"]["stopped"] is True
    assert jobs["create_database"]["stopped"] is False

    flags = {f["name"]: f for f in _json("flags", "list", "--json", env=env)["flags"]}
    assert sorted(flags) == [
        "beta_feature",
        "disable_gone_job",
        "disable_pending_rows",
        "disable_stamp",
    ]
    stamp_flag = flags["disable_stamp"]
    assert _when(stamp_flag.pop("updated_at")) <= datetime.now(UTC)
    assert stamp_flag == {
        "name": "disable_stamp",
        "enabled": True,
        "rejected": 1,
        "skipped": 0,
        "updated_by": "ops",
        "reason": "maintenance",
        "until": None,
        "job": "stamp",
        "job_registered": True,
    }
    assert (flags["disable_gone_job"]["job"], flags["disable_gone_job"]["job_registered"]) == (
        "gone_job",
        False,
    )
    assert (flags["beta_feature"]["enabled"], flags["beta_feature"]["job"]) == (False, None)
    assert flags["beta_feature"]["job_registered"] is None

    history = _json("flags", "history", "beta_feature", "--json", env=env)["history"]
    assert [(e["old_value"], e["new_value"], e["actor"], e["reason"]) for e in history] == [
        (True, False, "ops", "done"),
        (None, True, "ops", None),
    ]
    assert _when(history[0]["at"]) >= _when(history[1]["at"])
    everything = _json("flags", "history", "--json", env=env)["history"]
    assert len(everything) == 5

    (letter,) = await app.dead.list()
    (dead,) = _json("dead", "list", "--json", env=env)["dead_letters"]
    assert _when(dead.pop("first_failed_at")) <= _when(dead.pop("last_failed_at"))
    assert dead == {
        "id": letter.id,
        "job_name": "fails_twice",
        "job_id": letter.job_id,
        "queue": "arq:queue",
        "reason": "failed",
        "tries": 2,
        "error": "ValueError: bad value 7",
        "redacted": False,
        "args": [7],
        "kwargs": {},
    }
    assert _json("dead", "list", "--job", "stamp", "--json", env=env) == {"dead_letters": []}

    reconcilers = _json("reconcile", "--list", "--json", env=env)
    assert reconcilers == {
        "reconcilers": [
            {
                "name": "pending_rows",
                "job": "create_database",
                "schedule": "every 0:00:02",
                "flag": "disable_pending_rows",
                "stopped": True,
            }
        ]
    }


def test_json_lists_are_one_document_when_empty(redis_url: str, database_url: str) -> None:
    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}
    assert cli("migrate", env=env).returncode == 0
    assert _json("jobs", "list", "--json", env=env) == {"jobs": []}
    assert _json("flags", "list", "--json", env=env) == {"flags": [], "rules": []}
    assert _json("flags", "history", "--json", env=env) == {"history": []}
    assert _json("dead", "list", "--json", env=env) == {"dead_letters": []}
    assert _json("reconcile", "--list", "--json", env=env) == {"reconcilers": []}
    doc = _json("status", "--json", env=env)
    assert doc["queues"] == [
        {
            "name": "arq:queue",
            "ready": 0,
            "deferred": 0,
            "running": 0,
            "oldest_ready_age_s": None,
            "paused": False,
        }
    ]
    assert (doc["workers"], doc["dead_letters"], doc["stopped_jobs"]) == ([], [], [])
    assert (doc["paused_queues"], doc["throttles"]) == ([], [])
    run = cli("reconcile", "pending_rows", "--json", env=env)
    assert run.returncode == 2
    assert "--json goes with --list" in run.stderr


async def test_status_without_postgres_prints_the_redis_part_and_says_so_in_one_line(
    redis_url: str,
) -> None:
    async with App(Settings(redis_url=redis_url), kill_switch=False) as app:
        await app.enqueue(count_once, 1)
        await app.enqueue(count_once, 2, _defer_by=600)
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    cases = {
        "unreachable": {"ASYNCJOBS_DATABASE_URL": unreachable, "ASYNCJOBS_DATABASE_TIMEOUT": "1"},
        "not configured": {},
    }
    for said, extra in cases.items():
        env = {"ASYNCJOBS_REDIS_URL": redis_url, **extra}
        human = cli("status", env=env)
        assert human.returncode == 0, human.stderr
        assert "Traceback" not in human.stderr
        row = next(x for x in human.stdout.splitlines() if x.startswith("arq:queue"))
        assert row.split()[1:4] == ["1", "1", "0"]
        (line,) = [x for x in human.stdout.splitlines() if "unavailable" in x]
        assert said in line
        doc = _json("status", "--json", env=env)
        assert doc["postgres"]["available"] is False
        assert said in doc["postgres"]["error"]
        assert (doc["dead_letters"], doc["stopped_jobs"]) == (None, None)
        assert doc["queues"][0]["ready"] == 1


def test_status_without_redis_is_a_one_line_error() -> None:
    env = {
        "ASYNCJOBS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "ASYNCJOBS_REDIS_TIMEOUT": "0.5",
    }
    for args in (("status",), ("status", "--json")):
        result = cli(*args, env=env)
        assert result.returncode == 1
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: Redis is unreachable")
        assert "ASYNCJOBS_REDIS_URL" in line


async def test_a_held_job_is_running_until_its_worker_is_gone_then_ready_again(
    app: App, redis: aioredis.Redis
) -> None:
    held = await app.enqueue(count_once, 1, _defer_until=datetime.now(UTC) - PAST)
    waiting = await app.enqueue(count_once, 2)
    assert held is not None
    assert waiting is not None
    worker_id = "host:1:status"
    fields = registration(worker_id, ("arq:queue",), time.time(), [held.job_id], 10)
    await beat(redis, worker_id, fields, 60_000)
    await redis.sadd(worker_jobs_key(worker_id), held.job_id)

    (stats,) = await queue_stats(app, ["arq:queue"])
    assert (stats.ready, stats.deferred, stats.running) == (1, 0, 1)
    assert stats.oldest_ready_age is not None
    assert stats.oldest_ready_age < PAST.total_seconds()  # the held job is older, not ready

    await redis.delete(worker_key(worker_id))  # its registration expired: dead
    (stats,) = await queue_stats(app, ["arq:queue"])
    assert (stats.ready, stats.deferred, stats.running) == (2, 0, 0)
    assert stats.oldest_ready_age is not None
    assert stats.oldest_ready_age >= PAST.total_seconds()
