"""`nox -s demo`: start Redis and PostgreSQL, run a worker, enqueue jobs, watch them run.

Everything is real: throwaway servers on free ports, a worker started as
`arq asyncjobs.WorkerSettings` in its own process, jobs enqueued with
`asyncjobs.enqueue`. Exits 0 only if every job ran; stops everything it
started, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

import asyncjobs
from asyncjobs.testing import EmbeddedServices, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"  {text}", flush=True)


async def drive(services: EmbeddedServices) -> bool:
    from examples.quickstart.jobs import InvoiceJob, send_welcome_email

    async with asyncjobs.App() as app:
        applied = await app.migrate()
        say(f"migrated the runtime schema: {', '.join(applied) or 'already up to date'}")
        print("\n2. Enqueue 10 jobs the way a web handler would: await enqueue(job, ...)")
        expected = []
        for user_id in range(1, 6):
            job = await asyncjobs.enqueue(send_welcome_email, user_id, locale="en")
            assert job is not None
            expected.append(("send_welcome_email", user_id))
        for invoice_id in range(100, 105):
            job = await asyncjobs.enqueue(InvoiceJob, invoice_id)
            assert job is not None
            expected.append(("invoice_job", invoice_id))
        say(f"enqueued {len(expected)} jobs (5 send_welcome_email, 5 invoice_job)")

        print("\n3. Bad input gets a clear error, and nothing is written:")
        for bad in (
            lambda: asyncjobs.enqueue("send_welcom_email", 1),
            lambda: asyncjobs.enqueue(send_welcome_email, 1, _defer=5),
            lambda: asyncjobs.enqueue(send_welcome_email, object()),
        ):
            try:
                await bad()
            except asyncjobs.AsyncJobsError as exc:
                say(f"{type(exc).__name__}: {str(exc)[:110]}...")

        print("\n4. The worker runs them:")
        client = aioredis.from_url(os.environ["ASYNCJOBS_REDIS_URL"])
        ran: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        try:
            while len(ran) < len(expected) and time.monotonic() < deadline:
                new = await client.lrange("demo:ran", len(ran), -1)
                for raw in new:
                    entry = json.loads(raw)
                    ran.append(entry)
                    say(f"[{len(ran):2}/{len(expected)}] ran {entry}")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        got = sorted((str(e["job"]), int(e.get("user_id", e.get("invoice_id", -1)))) for e in ran)  # type: ignore[call-overload]
        return got == sorted(expected)


def main() -> int:
    # The demo narrates; the runtime's own events would interleave with it.
    asyncjobs.configure_logging("console", "warning")
    print("asyncjobs demo\n\n1. Start throwaway Redis and PostgreSQL, and a worker process")
    with EmbeddedServices() as services:
        os.environ.update(services.environ)
        say(f"Redis      {services.environ['ASYNCJOBS_REDIS_URL']}")
        say(f"PostgreSQL {services.environ['ASYNCJOBS_DATABASE_URL']}")
        env = {
            **services.environ,
            "ASYNCJOBS_IMPORTS": "examples.quickstart.jobs",
            "PYTHONPATH": str(ROOT),
        }
        with WorkerProcess(env, cwd=ROOT) as worker:
            pid = worker.process.pid if worker.process else "?"
            say(f"worker: arq asyncjobs.WorkerSettings (pid {pid})")
            ok = asyncio.run(drive(services))
            succeeded = sum('"job.succeeded"' in line for line in worker.lines)
        print("\n5. Summary")
        say(f"jobs succeeded according to the worker's job.succeeded events: {succeeded}")
        say("every job ran exactly as enqueued" if ok else "SOME JOBS DID NOT RUN")
    print("\nStopped the worker and both servers.")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped")
        sys.exit(130)
