"""``nox -s demo``: the provisioning service, run for real and narrated.

Starts throwaway Redis and PostgreSQL, migrates, starts the web app (uvicorn)
and a worker (``arq asyncjobs.WorkerSettings``) as processes of their own,
and drives the API with real HTTP requests while an operator uses the
``asyncjobs`` CLI: jobs flow, a kill switch stops one job class and lets it
go again, Redis is wiped and the reconcilers recover every row, a double
delete schedules one cleanup, a poisoned job becomes a dead letter and is
retried once fixed. Ends with a summary; exits 0 only if every row reached
its final state. Stops everything it started, also on Ctrl-C.

The worker runs the reconcilers every 5 s instead of every minute, and backups
every 10 s instead of every 5 minutes, so the story fits in a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs.testing import EmbeddedServices, ServiceProcess, WorkerProcess, free_port

from . import schema

ROOT = Path(__file__).resolve().parents[2]
RECONCILE_EVERY = 5
TTY = sys.stdout.isatty()
BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if TTY else ("",) * 5
)


# -- narration -------------------------------------------------------------------------------


def act(number: int, title: str, *lines: str) -> None:
    print(f"\n{BOLD}{number}. {title}{RESET}", flush=True)
    for line in lines:
        say(line, dim=True)


def say(text: str, *, dim: bool = False) -> None:
    print(f"   {DIM if dim else ''}{text}{RESET if dim else ''}", flush=True)


def shown(command: list[str], output: str) -> None:
    print(f"   $ {shlex.join(command)}", flush=True)
    for line in output.rstrip().splitlines():
        if line.strip():
            print(f"     {line}", flush=True)


class Progress:
    """One line redrawn in place on a terminal; a line a second when piped."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.last_print = 0.0
        self.text = ""

    def update(self, done: int, detail: str) -> None:
        width = 30
        filled = width * min(done, self.total) // max(self.total, 1)
        self.text = (
            f"   {self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{self.total}  {detail}"
        )
        now = time.monotonic()
        if TTY:
            print(f"\r\033[K{self.text}", end="", flush=True)
        elif now - self.last_print >= 1.0:
            print(self.text, flush=True)
            self.last_print = now

    def close(self) -> None:
        if TTY:
            print(flush=True)
        else:
            print(self.text, flush=True)


# -- the parts -------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``asyncjobs ARGS`` as the operator would; print it and its output."""
    command = [sys.executable, "-m", "asyncjobs", *args]
    done = subprocess.run(
        command,
        env={**os.environ, **env, "ASYNCJOBS_IMPORTS": "examples.provisioning.jobs"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shown(["asyncjobs", *args], done.stdout)  # its log events (stderr) go unshown
    if done.returncode != 0:
        raise RuntimeError(f"asyncjobs {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


class Demo:
    """The running system: services, worker, web app, and the operator's tools."""

    def __init__(self, services: EmbeddedServices, worker: WorkerProcess, base_url: str) -> None:
        self.env = services.environ
        self.worker = worker
        self.base_url = base_url
        self.counts: Counter[str] = Counter()

    def cli(self, *args: str) -> str:
        return cli(self.env, *args)

    def events(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        """The worker's log events called ``name`` (from line ``since`` on)."""
        found = []
        for line in list(self.worker.lines)[since:]:
            if f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    async def stats(self, http: httpx.AsyncClient) -> dict[str, int]:
        response = await http.get("/stats")
        response.raise_for_status()
        return dict(response.json())

    async def wait_rows(
        self, http: httpx.AsyncClient, label: str, done: Callable[[dict[str, int]], int], total: int
    ) -> dict[str, int]:
        """Show a progress bar until ``done(stats)`` reaches ``total`` (or 60 s pass)."""
        bar = Progress(label, total)
        deadline = time.monotonic() + 60
        while True:
            stats = await self.stats(http)
            queued = await self.queued()
            bar.update(
                done(stats),
                f"pending {stats['pending']:>4} · ready {stats['ready']:>4} · "
                f"jobs in Redis {queued:>4}",
            )
            if done(stats) >= total or time.monotonic() > deadline:
                bar.close()
                return stats
            await asyncio.sleep(0.2)

    async def queued(self) -> int:
        client = aioredis.Redis.from_url(self.env["ASYNCJOBS_REDIS_URL"])
        try:
            return int(await client.zcard("arq:queue"))
        finally:
            await client.aclose()


async def until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> bool:
    """Poll ``check`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


# -- the story -------------------------------------------------------------------------------


async def story(demo: Demo) -> bool:
    async with httpx.AsyncClient(base_url=demo.base_url, timeout=30) as http:
        await jobs_flow(demo, http)
        await kill_switch(demo, http)
        await redis_wiped(demo, http)
        await delete_twice(demo, http)
        await dead_letter(demo, http)
        return await summary(demo, http)


async def jobs_flow(demo: Demo, http: httpx.AsyncClient) -> None:
    act(
        3,
        "Customers create databases",
        "POST /databases writes a row in state 'pending', then the handler calls",
        "`await enqueue(create_database_job, id)`; the worker provisions it and marks it ready.",
    )
    answers = await asyncio.gather(
        *(
            http.post("/databases", json={"name": f"shop-{i}", "owner_email": f"dev{i}@shop.io"})
            for i in range(1, 41)
        )
    )
    say(f"40 requests answered {sorted({a.status_code for a in answers})}; the first said:")
    say(json.dumps(answers[0].json()))
    await demo.wait_rows(http, "ready", lambda s: s["ready"], 40)


async def kill_switch(demo: Demo, http: httpx.AsyncClient) -> None:
    act(
        4,
        "An operator switches create_database_job off: no deploy, no restart",
        "The flag disable_create_database_job is read on every enqueue (from a cache that",
        "PostgreSQL's NOTIFY keeps fresh): a switched-off job never reaches Redis.",
    )
    demo.cli("jobs", "disable", "create_database_job", "--reason", "incident 42: provider down")
    await asyncio.sleep(0.5)  # the change reaches the web app by LISTEN/NOTIFY in milliseconds
    mark = len(demo.worker.lines)
    answers = [
        await http.post("/databases", json={"name": f"late-{i}", "owner_email": f"l{i}@shop.io"})
        for i in range(1, 11)
    ]
    refused = sum(not a.json()["queued"] for a in answers)
    demo.counts["refused by the kill switch (API)"] += refused
    say(f"10 more databases requested: {refused} enqueues refused; the API answered:")
    say(json.dumps(answers[0].json()))

    async def other_jobs_ran() -> bool:
        return any(e["job"].endswith("_job") for e in demo.events("job.succeeded", mark))

    await until(other_jobs_ran, within=15)
    ran = Counter(e["job"] for e in demo.events("job.succeeded", mark) if e["job"].endswith("_job"))
    others = ", ".join(f"{job} ×{n}" for job, n in sorted(ran.items())) or "none yet"
    stats = await demo.stats(http)
    say(f"Meanwhile other jobs go on running: {others}.")
    say(f"The 10 rows wait in PostgreSQL: {stats['pending']} pending.")
    demo.cli("jobs", "enable", "create_database_job")
    say(
        f"Nothing was lost: the reconciler pending_databases (every {RECONCILE_EVERY} s here, "
        "every minute by default) finds the pending rows and enqueues their jobs.",
        dim=True,
    )
    await demo.wait_rows(http, "ready", lambda s: s["ready"], 50)


async def redis_wiped(demo: Demo, http: httpx.AsyncClient) -> None:
    act(
        5,
        "Disaster: every key in Redis is lost (FLUSHALL) with 300 jobs in flight",
        "POST /databases/bulk inserts 300 rows and calls enqueue_many: 1,000 jobs per round trip.",
    )
    answer = (
        await http.post(
            "/databases/bulk", json={"count": 300, "prefix": "load", "owner_email": "ops@shop.io"}
        )
    ).json()
    say(f"the API answered {json.dumps(answer)}")
    await asyncio.sleep(1.0)
    client = aioredis.Redis.from_url(demo.env["ASYNCJOBS_REDIS_URL"])
    try:
        lost = int(await client.zcard("arq:queue"))
        await client.flushall()
    finally:
        await client.aclose()
    demo.counts["jobs wiped from Redis"] += lost
    stats = await demo.stats(http)
    say(f"FLUSHALL: {lost} queued jobs are gone; {stats['pending']} rows are still pending.")
    say("The rows are the truth: the reconciler re-enqueues every one of them.", dim=True)
    mark = len(demo.worker.lines)
    await demo.wait_rows(http, "ready", lambda s: s["ready"], 350)
    for run in demo.events("reconciler.finished", mark):
        if run["enqueued"]:
            say(
                f"reconciler.finished: {run['reconciler']} scanned {run['rows']} rows, "
                f"enqueued {run['enqueued']}, skipped {run['duplicates']} still queued",
                dim=True,
            )


async def delete_twice(demo: Demo, http: httpx.AsyncClient) -> None:
    act(
        6,
        "Deleting a database twice schedules one cleanup",
        "cleanup_database_job is unique_for=10 minutes: the second enqueue is refused.",
    )
    for _ in range(2):
        answer = (await http.delete("/databases/1")).json()
        demo.counts["refused as not unique (API)"] += not answer["queued"]
        say(f"DELETE /databases/1 -> {json.dumps(answer)}")

    async def deleted() -> bool:
        return bool((await http.get("/databases/1")).json()["state"] == "deleted")

    say("database 1 is deleted" if await until(deleted) else f"{RED}database 1 was not deleted")


async def dead_letter(demo: Demo, http: httpx.AsyncClient) -> None:
    retried = len(demo.events("job.retrying"))
    act(
        7,
        "Retries, and a job no retry can fix",
        "notify_owner_job mails the owner; the mail server is busy for every fourth database",
        f"on the first try, so far {retried} jobs failed and were retried with backoff.",
        "An address that cannot be mailed is a failure no retry fixes: the job gives up at once.",
    )
    answer = (
        await http.post("/databases", json={"name": "typo", "owner_email": "ann-at-shop.io"})
    ).json()
    mark_id = answer["id"]
    async with asyncjobs.App() as app:
        if not await until(lambda: _has_dead(app), within=30):
            say(f"{RED}no dead letter appeared")
            return
        demo.cli("dead", "list")
        (letter,) = await app.dead.list()
    fixed = await http.patch(f"/databases/{mark_id}", json={"owner_email": "ann@shop.io"})
    say(f"PATCH /databases/{mark_id} fixes the address -> {fixed.status_code}")
    demo.cli("dead", "retry", str(letter.id))

    async def notified() -> bool:
        return bool((await http.get(f"/databases/{mark_id}")).json()["notified_at"])

    ok = await until(notified)
    say(f"database {mark_id}'s owner is mailed" if ok else f"{RED}the retry did not mail the owner")


async def _has_dead(app: asyncjobs.App) -> bool:
    return bool(await app.dead.list())


async def summary(demo: Demo, http: httpx.AsyncClient) -> bool:
    async def settled() -> bool:
        s = await demo.stats(http)
        return s["pending"] == s["deleting"] == s["unnotified"] == 0

    await until(settled, within=2 * RECONCILE_EVERY + 10)
    stats = await demo.stats(http)
    succeeded = Counter(e["job"] for e in demo.events("job.succeeded"))
    jobs_run = sum(n for job, n in succeeded.items() if job.endswith("_job"))
    reconciler_runs = sum(n for job, n in succeeded.items() if not job.endswith("_job"))
    refused_by_reconcilers = sum(e["rejected"] for e in demo.events("reconciler.finished"))
    final = stats["ready"] + stats["deleted"]
    rows = [
        ("databases requested", stats["created"]),
        ("  ready", stats["ready"]),
        ("  deleted", stats["deleted"]),
        ("  still pending", stats["pending"]),
        ("owners mailed", stats["notified"]),
        ("provisionings done (side effects)", stats["provisioned"]),
        ("  duplicate runs that exited quickly", stats["create_attempts"] - stats["provisioned"]),
        ("backups taken", stats["backups"]),
        ("jobs run", jobs_run),
        ("reconciler runs", reconciler_runs),
        (
            "enqueues refused by the kill switch (API)",
            demo.counts["refused by the kill switch (API)"],
        ),
        ("enqueues refused as not unique (API)", demo.counts["refused as not unique (API)"]),
        ("reconciler enqueues refused (kill switch, unique)", refused_by_reconcilers),
        ("jobs wiped from Redis, then recovered", demo.counts["jobs wiped from Redis"]),
        ("jobs retried", len(demo.events("job.retrying"))),
        ("dead letters (retried by the operator)", len(demo.events("job.dead"))),
    ]
    print(f"\n{BOLD}Summary{RESET}")
    for label, value in rows:
        print(f"   {label:<50} {value:>6}")
    ok = (
        stats["pending"] == 0
        and stats["deleting"] == 0
        and stats["deleted"] == 1
        and stats["unnotified"] == 0
        and stats["provisioned"] == stats["provisioned_databases"] == final
        and stats["created"] == final
    )
    if ok:
        print(f"\n{GREEN}Every row reached its final state, each provisioned exactly once.{RESET}")
    else:
        print(f"\n{RED}Some rows did not reach their final state: {stats}{RESET}")
    return ok


# -- start and stop --------------------------------------------------------------------------


@contextlib.contextmanager
def running_system() -> Iterator[Demo]:
    act(1, "Start throwaway Redis and PostgreSQL, and migrate")
    with EmbeddedServices() as services:
        say(f"Redis      {services.environ['ASYNCJOBS_REDIS_URL']}")
        say(f"PostgreSQL {services.environ['ASYNCJOBS_DATABASE_URL']}")
        os.environ.update(services.environ)
        env = {
            **services.environ,
            "ASYNCJOBS_IMPORTS": "examples.provisioning.jobs",
            "ASYNCJOBS_MAX_JOBS": "20",
            "PROVISIONING_RECONCILE_EVERY": str(RECONCILE_EVERY),
            "PROVISIONING_BACKUP_EVERY": "10",
            "PROVISIONING_WORK": "0.2",
            "PYTHONPATH": str(ROOT),
        }
        cli(env, "migrate")
        asyncio.run(_create_schema())
        say("created the service's tables: databases, provisioned, backups")
        act(2, "Start the worker and the web app, each a process of its own")
        port = free_port()
        web = ServiceProcess(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.provisioning.web:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env,
            cwd=ROOT,
            new_session=True,  # Ctrl-C reaches the demo only, which stops everything in order
        )
        with WorkerProcess(env, cwd=ROOT, new_session=True) as worker, web:
            say(f"worker   arq asyncjobs.WorkerSettings (pid {worker.process.pid})")  # type: ignore[union-attr]
            base_url = f"http://127.0.0.1:{port}"
            _wait_http(base_url + "/health", web)
            say(f"web app  uvicorn examples.provisioning.web:app at {base_url}")
            yield Demo(services, worker, base_url)
            print()
            say("stopping the web app, the worker and both servers", dim=True)


async def _create_schema() -> None:
    async with asyncjobs.App() as app:
        await schema.create_schema(await app.db())


def _wait_http(url: str, process: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"the web app exited:\n{process.output}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s:\n{process.output}")


def main() -> int:
    # A `kill` stops the demo like Ctrl-C does: everything it started is stopped first.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncjobs.configure_logging("console", "warning")  # the demo narrates; events go to the log
    print(f"{BOLD}asyncjobs demo: a provisioning service{RESET}")
    say("A web API that creates databases, a worker that provisions them, and an operator.")
    started = time.monotonic()
    with running_system() as demo:
        ok = asyncio.run(story(demo))
    say(f"done in {time.monotonic() - started:.0f} s", dim=True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started was stopped")
        sys.exit(130)
