"""Smoke-test an installed asyncjobs (a wheel in a fresh venv), away from the checkout.

Run with the venv's interpreter (``nox -s wheel`` does)::

    /path/to/venv/bin/python scripts/wheel_smoke.py

In a temporary directory it starts throwaway Redis and PostgreSQL
(``asyncjobs.testing.EmbeddedServices``), runs the installed ``asyncjobs migrate``,
writes a user module with one ``@asyncjobs.job``, starts a worker
(``python -m arq asyncjobs.WorkerSettings``), enqueues the job, waits until it has
written its Redis key, runs ``asyncjobs jobs list``, stops the worker and the
servers. Any failure raises, so the exit status is non-zero.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio

import asyncjobs
from asyncjobs.testing import EmbeddedServices, WorkerProcess

CHECKOUT = Path(__file__).resolve().parent.parent
JOB_MODULE = "wheel_smoke_jobs"
DONE_KEY = "wheel-smoke:done"
DEADLINE = 30.0

JOB_SOURCE = f'''\
import asyncjobs


@asyncjobs.job
async def wheel_smoke_job(ctx, token: str) -> None:
    await ctx["redis"].set("{DONE_KEY}", token)
'''


def step(message: str) -> None:
    print(f"wheel_smoke: {message}", flush=True)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a command; raise with its output if it fails or takes over a minute."""
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


async def enqueue_and_wait(redis_url: str) -> str:
    """Enqueue the job through the default App; wait until the worker ran it; its id."""
    job_module = __import__(JOB_MODULE)
    client = redis.asyncio.Redis.from_url(redis_url)
    token = uuid.uuid4().hex
    try:
        job = await asyncjobs.enqueue(job_module.wheel_smoke_job, token)
        if job is None:
            raise RuntimeError("enqueue() returned None: the job was not enqueued")
        deadline = time.monotonic() + DEADLINE
        while (value := await client.get(DONE_KEY)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.job_id} did not run within {DEADLINE}s")
            await asyncio.sleep(0.05)
        if value.decode() != token:
            raise RuntimeError(f"{DONE_KEY} holds {value!r}, not the token the job was given")
        return str(job.job_id)
    finally:
        await client.aclose()
        await asyncjobs.get_app().close()


def main() -> None:
    origin = Path(asyncjobs.__file__).resolve()
    if CHECKOUT in origin.parents:
        raise RuntimeError(f"asyncjobs was imported from the checkout ({origin}), not the wheel")
    step(f"asyncjobs {asyncjobs.__version__} from {origin.parent}")
    command = Path(sys.executable).parent / "asyncjobs"
    if not command.exists():
        raise RuntimeError(f"the wheel installed no `asyncjobs` command ({command})")
    if os.environ.get("ASYNCJOBS_EMBEDDED") == "wheels":  # no server binaries but the wheels'
        from asyncjobs._services import find_postgres_bin, find_redis_server

        for binary in (find_redis_server(), str(find_postgres_bin())):
            if "site-packages" not in binary:
                raise RuntimeError(f"ASYNCJOBS_EMBEDDED=wheels, yet {binary} is used")
            step(f"server binaries from the wheels: {binary}")

    with (
        tempfile.TemporaryDirectory(prefix="asyncjobs-smoke-") as tmp,
        EmbeddedServices() as services,
    ):
        work = Path(tmp)
        (work / f"{JOB_MODULE}.py").write_text(JOB_SOURCE)
        sys.path.insert(0, str(work))
        env = {**services.environ, "ASYNCJOBS_IMPORTS": JOB_MODULE}
        os.environ.update(env)
        full_env = {**os.environ}

        step("asyncjobs migrate")
        run([str(command), "migrate"], full_env, work)

        worker = WorkerProcess(env, cwd=work)
        worker.start(wait_ready=DEADLINE)
        try:
            step("worker started; enqueueing")
            job_id = asyncio.run(enqueue_and_wait(services.environ["ASYNCJOBS_REDIS_URL"]))
            step(f"job {job_id} ran")

            listing = run([str(command), "jobs", "list"], full_env, work)
            if "wheel_smoke_job" not in listing or "running" not in listing:
                raise RuntimeError(f"`asyncjobs jobs list` did not list the job:\n{listing}")
            step("asyncjobs jobs list answered")
        finally:
            code = worker.stop(timeout=DEADLINE)
        if code != 0 or not any("worker.stopped" in line for line in worker.lines):
            raise RuntimeError(f"the worker did not stop cleanly (exit {code}):\n{worker.output}")
        step("worker stopped")
    step("passed")


if __name__ == "__main__":
    main()
