"""What asyncjobs borrows from arq and redis-py, held against the real thing.

Everything borrowed lives in ``asyncjobs/_arq.py``; these tests pin it: the
commands we pack equal redis-py's own packing, the settings arq's command reads
from ``WorkerSettings``, and the result format arq's ``Job`` reads, for a job
that succeeded, failed, or was cancelled. And no other module imports arq or
redis-py.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import arq.worker
import pytest
from arq.connections import RedisSettings

import asyncjobs
from asyncjobs._arq import EnvRedisSettings, pack_command
from asyncjobs._enqueue import Prepared, pack_enqueue
from tests.conftest import ROOT

PACKAGE = ROOT / "asyncjobs"


def test_no_module_but_the_boundary_imports_arq_or_redis() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_arq.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("arq", "redis"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("unique", [False, True])
def test_the_packed_enqueue_is_byte_equal_to_redis_pys_packing(unique: bool) -> None:
    jobs = [
        Prepared(
            f"id-{n}",
            "arq:queue" if n % 2 else "other",
            1_700_000_000_000 + n,
            86_400_000,
            b'{"t":null,"f":"x","a":[%d],"k":{},"et":1}' % n,
            f"asyncjobs:unique:x:{n}" if unique else None,
            60_000 if unique else 0,
        )
        for n in range(3)
    ]
    keys: list[str] = []
    args: list[Any] = []
    for job in jobs:
        keys += [f"arq:job:{job.job_id}", f"arq:result:{job.job_id}", job.queue]
        if unique:
            keys.append(job.unique_key or "")
    for job in jobs:
        args += [job.expires_ms, job.score, job.payload, job.job_id]
        if unique:
            args.append(job.unique_ms)
    # the layout: every job's keys, then every job's arguments
    expected = pack_command("EVALSHA", "abc123", len(keys), *keys, *args)
    assert pack_enqueue("abc123", jobs) == expected


def test_arq_reads_worker_settings_without_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("ASYNCJOBS_REDIS_URL", "ASYNCJOBS_IMPORTS"):
        monkeypatch.delenv(var, raising=False)
    kwargs = arq.worker.get_kwargs(asyncjobs.WorkerSettings)
    assert set(kwargs) == {
        "functions",
        "on_startup",
        "handle_signals",
        "redis_settings",
        "job_serializer",
        "job_deserializer",
    }
    assert isinstance(kwargs["redis_settings"], EnvRedisSettings)
    assert "ASYNCJOBS_REDIS_URL" in repr(kwargs["redis_settings"])  # repr reads nothing
    assert vars(asyncjobs.WorkerSettings)  # vars()/help() need no environment
    # arq builds its Worker from them (arq's own constructor checks the options)
    worker = arq.worker.create_worker(asyncjobs.WorkerSettings)
    try:
        assert worker.on_startup is kwargs["on_startup"]
    finally:
        worker.loop.close()  # arq's Worker made itself an event loop


def test_a_subclass_keeps_its_options_and_its_hooks_run_inside_asyncjobs_loop() -> None:
    async def hook(ctx: dict[str, Any]) -> None: ...

    class Custom(asyncjobs.WorkerSettings):
        max_jobs = 7
        on_startup = staticmethod(hook)
        on_shutdown = hook

    kwargs = arq.worker.get_kwargs(Custom)
    assert kwargs["max_jobs"] == 7
    assert kwargs["on_startup"] is not hook  # the hand-over to asyncjobs' loop
    assert "on_shutdown" not in kwargs  # asyncjobs' loop calls it
    assert Custom.user_on_startup is hook
    assert Custom.user_on_shutdown is hook
    assert kwargs["redis_settings"] is asyncjobs.WorkerSettings.redis_settings


def test_env_redis_settings_resolve_once_on_first_read() -> None:
    calls = []

    def resolve() -> RedisSettings:
        calls.append(1)
        return RedisSettings(host="example.invalid", port=6390)

    lazy = EnvRedisSettings(resolve)
    assert calls == []
    assert (lazy.host, lazy.port, lazy.database) == ("example.invalid", 6390, 0)
    assert calls == [1]


def test_boundary_module_is_the_only_file_spelling_arqs_key_prefixes() -> None:
    literal = re.compile(r"""["']arq:(job|in-progress|result|retry|abort)""")
    users = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if literal.search(p.read_text()) and p.name != "_arq.py"
    ]
    assert users == []
