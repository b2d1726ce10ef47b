"""Run arq's own test suite with ``ArqRedis.enqueue_job`` replaced by asyncjobs' write path.

Run from the repository root (PyPI must be reachable; takes about a minute)::

    python scripts/arq_suite.py [extra pytest arguments, e.g. -k defer]

In a temporary directory it downloads arq's sdist, installs arq's test dependencies at
the versions of arq's uv.lock with ``pip --target`` (arq's conftest needs pytest-asyncio
0.23, which the project's own pytest 9 cannot load, so nothing goes into the venv),
starts a throwaway redis-server on a free port, and runs arq's tests/ twice with this
file as a pytest plugin: as they are (baseline), then with ``enqueue_job`` going through
asyncjobs' ``split_options`` + ``prepare`` + ``write_prepared``. It stops its Redis and
prints both summaries and the tests that fail only with the substitution.

The substitute takes the job id, queue, score, TTL and the write itself (one Lua call,
refusing an id whose job or result exists) from asyncjobs, on the test's own ArqRedis.
The payload bytes alone are arq's: the ArqRedis's own ``job_serializer`` (pickle unless
the test chose another) with asyncjobs' enqueue time, because arq's tests and worker read
payloads with that deserializer, so asyncjobs' JSON would measure the format, not the write.
Never touches the Redis on port 6379 (arq's fixtures FLUSHALL the Redis they are given).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import types
import xml.etree.ElementTree as ET
from pathlib import Path

from asyncjobs._services import EmbeddedRedis

ARQ_VERSION = "0.28.0"
PORT_ENV, SUBSTITUTE_ENV = "ARQ_SUITE_REDIS_PORT", "ARQ_SUITE_SUBSTITUTE"
NOT_NEEDED = {"coverage", "pytest-pretty", "testcontainers"}  # testcontainers is faked below
# arq's lock has redis 4.6; the venv's redis 5 (asyncjobs needs it) deprecates the close() that
# arq's fixtures and worker call, and arq's pytest settings turn warnings into errors.
CLOSE_DEPRECATED = "ignore:Call to deprecated close:DeprecationWarning"


# --- the pytest plugin (this module imported by pytest with -p arq_suite) ---------------


def _fake_testcontainers(port: int) -> None:
    """arq's conftest asks testcontainers for a Docker Redis: hand it ours instead."""

    class RedisContainer:
        port = 6379

        def __init__(self, image: str) -> None:
            pass

        def __enter__(self) -> RedisContainer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def get_container_host_ip(self) -> str:
            return "127.0.0.1"

        def get_exposed_port(self, _port: int) -> int:
            return port

    package, module = types.ModuleType("testcontainers"), types.ModuleType("testcontainers.redis")
    module.RedisContainer = RedisContainer  # type: ignore[attr-defined]
    package.redis = module  # type: ignore[attr-defined]
    sys.modules.update({"testcontainers": package, "testcontainers.redis": module})


def _substitute_enqueue(port: int) -> None:
    from arq.connections import ArqRedis
    from arq.jobs import Job, serialize_job

    from asyncjobs import App, Settings
    from asyncjobs._core import EnqueueRequest
    from asyncjobs._enqueue import WRITTEN, prepare, split_options, write_prepared
    from asyncjobs._jobs import build_spec

    async def any_job(ctx, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Stands for every arq function: only its options are checked."""

    spec = build_spec(any_job, name="arq_job")

    async def enqueue_job(
        self,
        function,
        *args,
        _job_id=None,
        _queue_name=None,
        _defer_until=None,
        _defer_by=None,
        _expires=None,
        _job_try=None,
        **kwargs,
    ):  # type: ignore[no-untyped-def]
        app = self.__dict__.get("_asyncjobs_app")
        if app is None:
            app = self._asyncjobs_app = App(
                Settings(redis_url=f"redis://127.0.0.1:{port}"), kill_switch=False
            )
            app._redis = self  # write on the test's own client, as arq does
        options = {
            "_job_id": _job_id,
            "_queue_name": _queue_name or self.default_queue_name,
            "_defer_until": _defer_until,
            "_defer_by": _defer_by,
            "_expires": _expires,
            "_job_try": _job_try,
        }
        _, options = split_options(spec, (), options)
        job = prepare(EnqueueRequest(app, spec, (), {}, options))  # id, queue, score, TTL
        enqueued_ms = json.loads(job.payload)["et"]
        payload = serialize_job(
            function, args, kwargs, _job_try, enqueued_ms, serializer=self.job_serializer
        )
        (code,) = await write_prepared(
            app, [job._replace(payload=payload)], f"job {function!r} was not"
        )
        if code != WRITTEN:
            return None
        return Job(
            job.job_id, redis=self, _queue_name=job.queue, _deserializer=self.job_deserializer
        )

    ArqRedis.enqueue_job = enqueue_job  # type: ignore[method-assign]


if __name__ != "__main__" and os.environ.get(PORT_ENV):  # before arq's conftest is imported
    _fake_testcontainers(int(os.environ[PORT_ENV]))
    if os.environ.get(SUBSTITUTE_ENV):
        _substitute_enqueue(int(os.environ[PORT_ENV]))


# --- the runner ----------------------------------------------------------------------


def test_requirements(src: Path) -> list[str]:
    """arq's ``testing`` group and ``watch`` extra, at the versions of arq's uv.lock."""
    project = tomllib.loads((src / "pyproject.toml").read_text())
    needed = (
        project["dependency-groups"]["testing"]
        + project["project"]["optional-dependencies"]["watch"]
    )
    wanted = {re.split(r"[\[<>=~ ]", r)[0] for r in needed} - NOT_NEEDED
    lock = tomllib.loads((src / "uv.lock").read_text())["package"]
    return [f"{p['name']}=={p['version']}" for p in lock if p["name"] in wanted]


def run_suite(
    src: Path, tmp: Path, port: int, substitute: bool, extra: list[str]
) -> tuple[str, dict[str, str]]:
    """Run arq's tests; returns pytest's summary line, each failed test's first message line."""
    name = "substituted" if substitute else "baseline"
    report, log = tmp / f"{name}.xml", tmp / f"{name}.log"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(tmp / "deps"), str(Path(__file__).resolve().parent)]),
        PORT_ENV: str(port),
        SUBSTITUTE_ENV: "1" if substitute else "",
    }
    cmd = [sys.executable, "-m", "pytest", "-p", "arq_suite", "-p", "no:cacheprovider", "-q"]
    cmd += ["-W", CLOSE_DEPRECATED]
    with log.open("w") as out:
        subprocess.run(
            [*cmd, f"--junitxml={report}", "tests", *extra],
            cwd=src,
            env=env,
            stdout=out,
            stderr=out,
        )
    summary = log.read_text().strip().splitlines()[-1]
    failed: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        for problem in (*case.iter("failure"), *case.iter("error")):
            message = (problem.get("message") or "").strip().splitlines() or [""]
            failed[f"{case.get('classname')}::{case.get('name')}"] = message[0][:160]
    return summary, failed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="arq_suite_") as name:
        tmp = Path(name)
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        subprocess.run(
            [
                *pip,
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"arq=={ARQ_VERSION}",
                "-d",
                name,
            ],
            check=True,
        )
        with tarfile.open(tmp / f"arq-{ARQ_VERSION}.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"arq-{ARQ_VERSION}"
        subprocess.run(
            [*pip, "install", "--target", str(tmp / "deps"), *test_requirements(src)], check=True
        )
        redis = EmbeddedRedis(tmp / "redis")  # asyncjobs' own throwaway server
        redis.start()
        try:
            base_summary, base_failed = run_suite(src, tmp, redis.port, False, sys.argv[1:])
            sub_summary, sub_failed = run_suite(src, tmp, redis.port, True, sys.argv[1:])
        finally:
            redis.stop()
    print(f"baseline:    {base_summary}")
    print(f"substituted: {sub_summary}")
    only = sorted(sub_failed.keys() - base_failed.keys())
    print(f"{len(only)} test(s) fail only with asyncjobs' write path:")
    for test_id in only:
        print(f"  {test_id}: {sub_failed[test_id]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
