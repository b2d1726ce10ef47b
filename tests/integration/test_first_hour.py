"""A new user's first hour: the installed ``asyncjobs`` command, run from a directory
holding the user's own module, never ``python -m`` with PYTHONPATH set."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from asyncjobs import App, Settings
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT
from tests.helpers import eventually, log_events, wait_for_event_blocking, wait_until
from tests.userproject import ARQ, COMMAND, run, user_env


def test_a_successful_command_prints_its_result_only(
    project: Path, redis_url: str, database_url: str
) -> None:
    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}
    assert run(project, "migrate", **env).returncode == 0
    stopped = run(project, "jobs", "disable", "send_welcome_email", "--reason", "test", **env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines()[0] == "disable_send_welcome_email is now ON (did not exist)"
    assert "Undo: asyncjobs jobs enable send_welcome_email" in stopped.stdout
    assert stopped.stderr == ""  # no log events at the default level
    listed = run(project, "jobs", "list", **env)
    assert "send_welcome_email" in listed.stdout
    assert "STOPPED" in listed.stdout
    assert listed.stderr == ""


def test_purge_asks_on_a_terminal_and_nothing_goes_when_the_answer_is_no(
    project: Path, redis_url: str, database_url: str
) -> None:
    asyncio.run(_one_dead_letter(redis_url, database_url))
    env = user_env(ASYNCJOBS_REDIS_URL=redis_url, ASYNCJOBS_DATABASE_URL=database_url)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a terminal
        os.chdir(project)
        os.execve(COMMAND, [COMMAND, "dead", "purge"], env)
    output = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in output and time.monotonic() < deadline:
        output += _read(fd, deadline)
    os.write(fd, b"n\n")
    status, rest = _exit_status(pid, fd)
    output += rest
    assert b"Delete 1 dead letter(s)?" in output
    assert os.waitstatus_to_exitcode(status) == 1
    listed = run(
        project, "dead", "list", **{k: v for k, v in env.items() if k.startswith("ASYNCJOBS_")}
    )
    assert "gone_job" in listed.stdout


def test_dev_gives_stable_settings_in_a_file_to_source(project: Path) -> None:
    redis_port, postgres_port = free_port(), free_port()
    env_file = project / "asyncjobs.env"
    proc = subprocess.Popen(
        [
            COMMAND,
            "dev",
            "--port-redis",
            str(redis_port),
            "--port-postgres",
            str(postgres_port),
            "--env-file",
            str(env_file),
        ],
        cwd=project,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(env_file.exists, within=90, what=f"asyncjobs dev wrote {env_file}")
        lines = env_file.read_text().splitlines()
        assert lines == [
            f"export ASYNCJOBS_REDIS_URL=redis://127.0.0.1:{redis_port}/0",
            f"export ASYNCJOBS_DATABASE_URL=postgresql://postgres@127.0.0.1:{postgres_port}/postgres",
        ]
        settings = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        migrate = run(project, "migrate", **settings)
        assert migrate.stdout.strip() == "schema is up to date"  # dev applied it already
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "asyncjobs' schema applied" in out
    assert not env_file.exists()  # stopped: the servers and their settings are gone


def test_flags_enable_warns_of_a_flag_that_stops_no_job(
    project: Path, redis_url: str, database_url: str
) -> None:
    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}
    assert run(project, "migrate", **env).returncode == 0
    typo = run(project, "flags", "enable", "disable_send_welcome_emial", **env)
    assert typo.returncode == 0
    assert "no registered job is named 'send_welcome_emial'" in typo.stderr
    known = run(project, "flags", "enable", "disable_send_welcome_email", **env)
    assert known.stderr == ""


async def test_rejected_counts_reach_flags_list_without_another_enqueue(
    project: Path, redis_url: str, database_url: str
) -> None:
    from tests.workerjobs import record_args

    settings = Settings(redis_url=redis_url, database_url=database_url)
    async with App(settings) as app:
        await app.migrate()
        await app.flags.enable("disable_record_args", actor="test")
        assert await app.enqueue(record_args, 1) is None
        env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}

        async def rejected_column_is_1() -> bool:  # this process stays idle meanwhile
            listed = await asyncio.to_thread(run, project, "flags", "list", **env)
            row = next(x for x in listed.stdout.splitlines() if x.startswith("disable_record_args"))
            return bool(row.split()[2] == "1")  # the rejected column

        await eventually(rejected_column_is_1, within=10, what="flags list shows the rejection")


async def test_a_process_without_a_database_enqueues_without_flag_warnings(redis_url: str) -> None:
    from tests.workerjobs import record_args

    with structlog.testing.capture_logs() as logged:
        async with App(Settings(redis_url=redis_url)) as app:
            assert await app.enqueue(record_args, 1) is not None
            assert await app.enqueue(record_args, 2) is not None
    assert [e for e in logged if e["log_level"] in ("warning", "error")] == []


def test_a_worker_says_at_start_that_postgresql_is_unreachable(
    project: Path, redis_url: str
) -> None:
    env = {
        **user_env(),
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/db",
        "ASYNCJOBS_DATABASE_TIMEOUT": "1",
    }
    worker = WorkerProcess(env, cwd=project)
    worker.argv = [ARQ, "asyncjobs.WorkerSettings"]
    with worker:
        wait_for_event_blocking(worker, "database.unavailable", within=30)
    event = log_events(worker.lines, "database.unavailable")[0]
    assert event["level"] == "warning"


def _first_hour_commands() -> list[str]:
    """The command lines of the README's "First hour" check list, comments removed."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## First hour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def test_the_first_hour_check_list_top_to_bottom(project: Path) -> None:  # noqa: C901 -- runs the README list line by line
    commands = _first_hour_commands()
    ports = {"6390": str(free_port()), "5490": str(free_port())}
    env = user_env()
    ran: list[str] = []
    dev: subprocess.Popen[str] | None = None
    worker: WorkerProcess | None = None
    job_id = ""
    try:
        for line in commands:
            for fixed, free in ports.items():
                line = line.replace(fixed, free)
            line = line.replace("JOB_ID", job_id)
            words = shlex.split(line)
            if words[0] in ("python3", "pip", "mkdir"):  # the venv and the module: in place
                ran.append(line)
                continue
            if words[0] == "export":
                key, value = words[1].split("=", 1)
                env[key] = value
            elif words[0] == "source":
                env_file = project / words[1]
                wait_until(env_file.exists, within=90, what=f"asyncjobs dev wrote {env_file}")
                for exported in env_file.read_text().splitlines():
                    key, value = exported.removeprefix("export ").split("=", 1)
                    env[key] = value
            elif words[:2] == ["asyncjobs", "dev"]:
                dev = subprocess.Popen(
                    [COMMAND, *words[1:]], cwd=project, env=env, stdout=subprocess.PIPE, text=True
                )
            elif words[0] == "arq":
                worker = WorkerProcess(env, cwd=project)
                worker.argv = [ARQ, *words[1:]]
                worker.start()
            else:
                # the activated venv's commands
                executable = {"asyncjobs": COMMAND, "python": sys.executable}[words[0]]
                argv = [executable, *words[1:]]
                result = subprocess.run(
                    argv, cwd=project, env=env, capture_output=True, text=True, timeout=120
                )
                assert result.returncode == 0, (line, result.stdout, result.stderr)
                if words[0] == "python":
                    job_id = result.stdout.strip().removeprefix("<arq job ").rstrip(">")
                if words[:2] == ["asyncjobs", "check"]:
                    assert result.stdout.split() == ["redis", "ok", "postgres", "ok"]
                if words[:2] == ["asyncjobs", "migrate"]:
                    assert result.stdout.strip() == "schema is up to date"
                if words[:3] == ["asyncjobs", "jobs", "cancel"]:
                    assert result.stdout.startswith(f"job {job_id} cancelled: removed from queue")
            ran.append(line)
        assert worker is not None
        wait_for_event_blocking(worker, "job.succeeded")
    finally:
        if worker is not None:
            worker.stop()
        if dev is not None:
            dev.send_signal(signal.SIGINT)
            dev.communicate(timeout=60)
    assert len(ran) == len(commands)
    assert job_id


def test_the_shell_edits_lines_keeps_history_and_has_asyncio_and_dead_letters(
    project: Path, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    asyncio.run(_one_dead_letter(redis_url, database_url))
    env = user_env(
        ASYNCJOBS_REDIS_URL=redis_url, ASYNCJOBS_DATABASE_URL=database_url, HOME=str(tmp_path)
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: the shell on a terminal
        os.chdir(project)
        os.execve(COMMAND, [COMMAND, "shell"], env)
    output = b""
    seen = 0  # what was already matched: each expectation looks past it

    def expect(marker: bytes) -> None:
        nonlocal output, seen
        deadline = time.monotonic() + 30
        while output.find(marker, seen) < 0 and time.monotonic() < deadline:
            output += _read(fd, deadline)
        found = output.find(marker, seen)
        assert found >= 0, f"{marker!r} did not come: {output[-500:]!r}"
        seen = found + len(marker)

    expect(b">>> ")
    os.write(fd, b"6 * 7\n")
    expect(b"42")
    expect(b">>> ")  # readline reads again (before it does, the terminal would echo keys)
    os.write(fd, b"\x1b[A\n")  # the Up arrow: the line again, from the history
    expect(b"42")
    expect(b">>> ")
    os.write(fd, b"asyncio.sleep.__name__\n")
    expect(b"'sleep'")
    expect(b">>> ")
    os.write(fd, b"(await dead.list())[0]\n")
    expect(b"gone_job")
    expect(b">>> ")
    os.write(fd, b"\x04")  # Ctrl-D
    status, rest = _exit_status(pid, fd)
    output += rest
    text = output.decode(errors="replace")
    assert "^[[A" not in text  # the arrow edited the line instead of being typed in
    assert text.count("6 * 7\r\n42") == 2
    assert "'sleep'" in text
    assert "DeadLetter(id=1, job_name='gone_job'" in text
    assert "traceback=" not in text  # a short repr
    assert os.waitstatus_to_exitcode(status) == 0
    assert "6 * 7" in (tmp_path / ".asyncjobs_history").read_text()


def _read(fd: int, deadline: float) -> bytes:
    """What the terminal has to say before ``deadline``; ``b""`` at its end or on time-out."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:  # the other side closed
        return b""


def test_a_wrong_role_is_reported_as_a_refused_login_not_as_a_stopped_server(
    project: Path, servers: dict[str, str]
) -> None:
    base = servers["postgres"].rsplit("@", 1)[1]  # host:port/db of the suite's own server
    result = run(project, "migrate", ASYNCJOBS_DATABASE_URL=f"postgresql://nosuchrole@{base}")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: PostgreSQL at ")
    assert "refused the login" in line
    assert 'role "nosuchrole" does not exist' in line
    assert "is running" not in line


def _exit_status(pid: int, fd: int, within: float = 30.0) -> tuple[int, bytes]:
    """The child's wait status and what it printed until it exited; killed (and the test
    failed) if it does not exit within ``within`` seconds."""
    output = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        output += _read(fd, time.monotonic() + 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, output + _read(fd, time.monotonic() + 0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the command did not exit: {output[-500:]!r}")


async def _one_dead_letter(redis_url: str, database_url: str) -> None:
    """A migrated database holding one dead letter, of a job named ``gone_job``."""
    async with App(Settings(redis_url=redis_url, database_url=database_url)) as app:
        await app.migrate()
        await app.dead.record_unrunnable(
            reason="unknown_job",
            job_name="gone_job",
            job_id="j",
            queue="arq:queue",
            payload=b"{}",
            args=[],
            kwargs={},
            tries=1,
            error="no such job",
        )
