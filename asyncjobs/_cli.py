"""The ``asyncjobs`` command (also ``python -m asyncjobs``): the operator's side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ._exceptions import AsyncJobsError, ControlError
from ._naming import job_of_flag
from ._settings import environment_help

if TYPE_CHECKING:
    from ._app import App
    from ._status import Status

T = TypeVar("T")


def _epilog() -> str:
    width = max(len(name) for name, _ in environment_help())
    lines = [f"  {name.ljust(width)}  {text}" for name, text in environment_help()]
    return "\b\nEnvironment variables:\n" + "\n".join(lines)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn asyncjobs' errors into a one-line message and exit code 1
    (with the traceback too at ``ASYNCJOBS_LOG_LEVEL=debug``)."""
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except AsyncJobsError as exc:
        if _debug():
            traceback.print_exc()
        raise click.ClickException(str(exc)) from exc


def _app(*, imports: bool = True, environ: Mapping[str, str] | None = None) -> App:
    """The App a command works on: the default App, with the jobs of ``ASYNCJOBS_IMPORTS``
    registered (unless ``imports=False``), or a new one on the settings in ``environ``.
    A bad setting or a module that cannot be imported is a one-line error."""
    from ._app import App, get_app
    from ._settings import Settings
    from ._worker import import_job_modules

    try:
        if environ is not None:
            return App(Settings.from_env(environ))
        if imports:
            import_job_modules(Settings.from_env().imports)
        return get_app()
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc


def _with_app(
    use: Callable[[App], Awaitable[T]],
    *,
    imports: bool = True,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Run ``use(app)`` on :func:`_app`'s App, closing it afterwards, with asyncjobs'
    errors said in one line (:func:`_run`). Every command opens and closes its App here."""
    app = _app(imports=imports, environ=environ)

    async def go() -> T:
        try:
            return await use(app)
        finally:
            await app.close()

    return _run(go)


def _json_option(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``--json``: print ``what`` as one JSON document instead (keys in the README)."""
    return click.option(
        "--json", "as_json", is_flag=True, help=f"Print {what} as one JSON document instead."
    )


def _print_json(document: Mapping[str, Any]) -> None:
    from ._status import dumps

    click.echo(dumps(document))


def _debug() -> bool:
    return os.environ.get("ASYNCJOBS_LOG_LEVEL", "").strip().lower() == "debug"


def _quiet_logs() -> None:
    """A command's standard output is its result; its log events go to standard error,
    and only errors unless ``ASYNCJOBS_LOG_LEVEL`` asks for more."""
    from ._logs import configure_logging, route_stdlib_logging

    level = os.environ.get("ASYNCJOBS_LOG_LEVEL", "").strip().lower() or "error"
    fmt = os.environ.get("ASYNCJOBS_LOG_FORMAT", "").strip().lower() or "auto"
    if level not in ("debug", "info", "warning", "error") or fmt not in ("auto", "json", "console"):
        return  # Settings.from_env() will say what is wrong with it
    configure_logging(fmt, level, stream=sys.stderr, force=True)
    route_stdlib_logging(level)  # asyncpg's and redis-py's records too, in the same format


def _current_directory_importable() -> None:
    """Put the current directory on ``sys.path``, as arq's command and ``python -m`` do,
    so ``ASYNCJOBS_IMPORTS=myapp.jobs`` finds ``./myapp`` from the installed command."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


@click.group(epilog=_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asyncjobs")
def cli() -> None:
    """asyncjobs: background jobs on arq, Redis and PostgreSQL.

    Run a worker with `arq asyncjobs.WorkerSettings`; use these commands to
    operate it.
    """
    _current_directory_importable()
    _quiet_logs()


@cli.command()
def migrate() -> None:
    """Create or update asyncjobs' tables in ASYNCJOBS_DATABASE_URL (idempotent)."""
    applied = _with_app(lambda app: app.migrate(), imports=False)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("schema is up to date")


def _pooling_note(app: App) -> str:
    """What ``check`` says about a transaction pooler in front of PostgreSQL."""
    pooling = app.pooling
    if pooling is None or not pooling.transaction:
        return ""
    if app.settings.database_listen_url is not None:
        return (
            f" (transaction pooling, {pooling.source}: flag notifications and exclusive "
            "jobs' locks over ASYNCJOBS_DATABASE_LISTEN_URL)"
        )
    return (
        f" (transaction pooling, {pooling.source}: flag changes by ASYNCJOBS_FLAG_TTL alone; "
        "exclusive jobs refused until ASYNCJOBS_DATABASE_LISTEN_URL is set)"
    )


@cli.command()
def check() -> None:
    """Check that Redis and PostgreSQL are reachable with the current settings."""

    async def go(app: App) -> list[tuple[str, str]]:
        report = []
        redis = await app.redis()
        try:
            async with asyncio.timeout(app.settings.redis_timeout):
                await redis.ping()
            report.append(("redis", "ok"))
        except Exception as exc:
            report.append(("redis", f"FAILED: {type(exc).__name__}: {exc}"))
        if app.settings.database_url is None:
            report.append(("postgres", "not configured (ASYNCJOBS_DATABASE_URL)"))
        else:
            try:
                pool = await app.db()
                await pool.fetchval("SELECT 1")
                report.append(("postgres", "ok" + _pooling_note(app)))
            except Exception as exc:
                report.append(("postgres", f"FAILED: {exc}"))
            if app.settings.database_listen_url is not None:
                try:  # the pooling probe connects: reachable and a session of its own
                    await app.session_url("flag notifications and exclusive jobs' locks")
                    report.append(("listen", "ok"))
                except Exception as exc:
                    report.append(("listen", f"FAILED: {exc}"))
        return report

    report = _with_app(go, imports=False)
    for service, status in report:
        click.echo(f"{service:9} {status}")
    if any(status.startswith("FAILED") for _, status in report):
        sys.exit(1)


@cli.command()
@_json_option("the status")
def status(as_json: bool) -> None:
    """Queues (ready, deferred, running, oldest ready job), live workers, dead letters,
    stopped jobs, the outbox backlog and reconcilers. Without PostgreSQL, the Redis part
    alone."""
    from ._status import snapshot

    now = _with_app(snapshot)
    if as_json:
        click.echo(now.to_json())
        return
    for line in _status_lines(now):
        click.echo(line)


def _status_lines(now: Status) -> list[str]:
    """``asyncjobs status`` for people: one section per part of :class:`~._status.Status`."""
    width = max([20, *(len(q.name) for q in now.queues)])
    lines = [
        f"{'queue':{width}} {'ready':>8} {'deferred':>8} {'running':>8}  {'oldest ready':12}  state"
    ]
    for q in now.queues:
        age = "-" if q.oldest_ready_age is None else _duration(q.oldest_ready_age)
        state = {None: "?", True: "PAUSED", False: "running"}[now.paused(q.name)]
        lines.append(
            f"{q.name:{width}} {q.ready:>8} {q.deferred:>8} {q.running:>8}  {age:12}  {state}"
        )
    lines += ["", f"workers alive: {len(now.workers)}"]
    for w in now.workers:
        beat = _duration((now.at - w.heartbeat).total_seconds())
        lines.append(
            f"  {w.id}  queues {','.join(w.queues)}  running {w.running}/{w.max_jobs}  "
            f"up {_duration((now.at - w.started).total_seconds())}  last beat {beat} ago"
        )
    lines.append("")
    dead, stopped = now.dead_letters, now.stopped_jobs
    if dead is None or stopped is None:
        lines.append(
            "dead letters, stopped jobs, rules, pauses, throttles, outbox: unavailable "
            f"({now.database_error})"
        )
    else:
        lines.append(f"dead letters: {sum(dead.values())}")
        lines += [f"  {job:28} {count:>6}" for job, count in dead.items()]
        lines.append(f"stopped jobs: {len(stopped)}")
        for s in stopped:
            why = f": {s.reason}" if s.reason else ""
            end = f" until {_utc(s.until)}" if s.until is not None else ""
            lines.append(
                f"  {s.job:28} since {s.stopped_at:%Y-%m-%d %H:%M:%S} UTC{end} by {s.stopped_by}"
                f"{why}"
            )
    if now.outbox is not None:
        oldest = now.outbox.oldest_age_s
        age = "" if oldest is None else f" (oldest {_duration(oldest)})"
        lines.append(f"outbox: {now.outbox.pending} committed, not yet in Redis{age}")
    if now.rules:
        lines.append(f"argument rules: {len(now.rules)}")
        lines += [f"  {_rule_job(r.job):28} {_rule_line(r)}" for r in now.rules]
    for title, controls in (("paused queues", now.paused_queues), ("throttles", now.throttles)):
        if controls is None:
            continue
        lines.append(f"{title}: {len(controls)}")
        for c in controls:
            why = f": {c.reason}" if c.reason else ""
            rate = f" {c.rate!s:>10}" if c.rate is not None else ""
            lines.append(
                f"  {c.target:28}{rate} since {c.updated_at:%Y-%m-%d %H:%M:%S} UTC by "
                f"{c.updated_by}{why}"
            )
    lines.append(f"reconcilers: {len(now.reconcilers)}")
    for r in now.reconcilers:
        state = "?" if r.stopped is None else ("STOPPED" if r.stopped else "running")
        lines.append(f"  {r.name:28} {r.job:24} {r.schedule:26} {state}")
    return lines


def _rule_job(job: str) -> str:
    return "(every job)" if job == "*" else job


def _duration(seconds: float) -> str:
    """``4.2s``, ``3m12s``, ``2h03m``, ``3d04h``: a duration for people."""
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


@cli.group()
def jobs() -> None:
    """Registered jobs (from the modules in ASYNCJOBS_IMPORTS)."""


def _registry_from_env() -> Any:
    return _app().registry


def _stopped_flags() -> dict[str, bool] | None:
    """Each flag's state (the default App's), or ``None`` when no database is configured
    to ask."""
    known = _flag_state()
    return None if known is None else {f.name: f.enabled for f in known[0]}


def _flag_state() -> tuple[list[Any], list[Any]] | None:
    """The flags and the argument rules (the default App's), or ``None`` when no database
    is configured to ask."""
    if _app().settings.database_url is None:
        return None

    async def read(app: App) -> tuple[list[Any], list[Any]]:
        return await app.flags.list(), await app.flags.rules()

    return _with_app(read)


@jobs.command("list")
@_json_option("the jobs")
def jobs_list(as_json: bool) -> None:
    """List the registered jobs with their queue, timeout and whether each is stopped
    (whole, for a while, or by argument rules, listed under it); a scheduled job's
    schedule and next run on a line below it."""
    from ._status import iso, job_record, job_schedule, rules_of

    app = _app()
    registry = app.registry
    if not len(registry) and not as_json:
        click.echo("no jobs registered; set ASYNCJOBS_IMPORTS to the modules that define them")
        return
    known = _flag_state() if len(registry) else None
    flags = None if known is None else {f.name: f for f in known[0]}
    rules = None if known is None else known[1]
    stopped = None if flags is None else {name: f.enabled for name, f in flags.items()}
    if as_json:
        queue = app.settings.queue_name
        records = [job_record(s, s.queue or queue, stopped, rules) for s in registry]
        _print_json({"jobs": records})
        return
    click.echo(f"{'job':28} {'queue':12} {'timeout':>8}  {'state':8} {'flag':34} defined in")
    for spec in registry:
        queue = spec.queue or app.settings.queue_name
        timeout = "-" if spec.timeout is None else f"{spec.timeout:g}s"
        flag = None if flags is None else flags.get(spec.flag)
        own = [] if rules is None else rules_of(spec, rules)
        state = "?" if flags is None else "running"
        if flag is not None and flag.enabled:
            state = "STOPPED"
        elif own:
            state = "RULES"
        click.echo(
            f"{spec.name:28} {queue:12} {timeout:>8}  {state:8} {spec.flag:34} {spec.origin}"
        )
        schedule, next_run = job_schedule(spec)
        if next_run is not None:
            click.echo(f"{'':30}{schedule}, next run {iso(next_run)}")
        if flag is not None and flag.enabled and flag.expires_at is not None:
            click.echo(f"{'':30}until {_utc(flag.expires_at)} (ends by itself)")
        for r in own:
            click.echo(f"{'':30}{_rule_line(r)}")
    if stopped is None:
        click.echo("(state unknown: ASYNCJOBS_DATABASE_URL is not set)")


def _rule_line(rule: Any) -> str:
    """One argument rule for people: what it stops, its counts, its end, who and why."""
    scope = "every job taking it: " if rule.job == "*" else ""
    end = f", until {_utc(rule.expires_at)}" if rule.expires_at is not None else ""
    why = f": {rule.reason}" if rule.reason else ""
    return (
        f"rule {scope}{rule.text}  (rejected {rule.rejected}, skipped {rule.skipped}{end}; "
        f"by {rule.created_by}{why})"
    )


def _change(flag: str, on: bool, actor: str | None, reason: str | None, until: Any = None) -> Any:
    if on:
        return _with_app(
            lambda app: app.flags.enable(flag, actor=actor, reason=reason, until=until),
            imports=False,
        )
    return _with_app(lambda app: app.flags.disable(flag, actor=actor, reason=reason), imports=False)


def _describe(change: Any) -> str:
    was = {None: "did not exist", True: "was on", False: "was off"}[change.old]
    now = "ON" if change.new else "off"
    end = f" until {_utc(change.expires_at)}" if change.expires_at is not None else ""
    if not change.changed:
        return f"{change.name} is already {now}{end}; nothing changed"
    if change.old is True and change.new:
        return f"{change.name} stays ON, now{end or ' with no end'}"
    return f"{change.name} is now {now}{end} ({was})"


def _utc(moment: Any) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


_reason = click.option("--reason", "-r", help="Why; recorded in the flag's history.")
_actor = click.option("--actor", help="Who; recorded in history (default: the OS user).")
_for = click.option(
    "--for", "for_", metavar="DURATION", help="A timed stop: it ends by itself after 30m, 2h, 1d..."
)
_until = click.option(
    "--until", metavar="TIME", help="A timed stop ending at this UTC time, e.g. 2026-12-01T10:00Z."
)
_where = click.option(
    "--where",
    multiple=True,
    metavar="RULE",
    help="Only the jobs whose argument matches: customer_id=42 (also !=, <, <=, >, >= on "
    "numbers, 'customer_id in (42,43)'); several are ANDed into one rule.",
)


def _stop_end(for_: str | None, until: str | None) -> datetime | timedelta | None:
    """The end of a timed stop from ``--for``/``--until``, checked now (one line naming
    the option that is wrong)."""
    from ._rules import end_of, parse_for, parse_until

    if for_ is not None and until is not None:
        raise click.UsageError("give --for or --until, not both")
    try:
        if for_ is not None:
            return parse_for(for_)
        if until is not None:
            return end_of(parse_until(until), what=f"--until {until}")
    except AsyncJobsError as exc:
        raise click.UsageError(str(exc)) from exc
    return None


def _parsed_where(where: tuple[str, ...]) -> tuple[Any, ...]:
    from ._rules import conditions

    try:
        return conditions(where)
    except AsyncJobsError as exc:
        raise click.BadParameter(str(exc), param_hint="--where") from exc


def _switch_job(
    job_name: str | None,
    stop: bool,
    actor: str | None,
    reason: str | None,
    where: tuple[str, ...] = (),
    all_jobs: bool = False,
    end: datetime | timedelta | None = None,
) -> None:
    from ._rules import ALL_JOBS, rule_text

    if all_jobs and job_name is not None:
        raise click.UsageError("give a JOB or --all-jobs, not both")
    if all_jobs and not where:
        raise click.UsageError(
            "--all-jobs goes with --where: it stops the jobs of every class "
            "that takes that argument"
        )
    if not all_jobs and job_name is None:
        raise click.UsageError("missing argument JOB_NAME (or --all-jobs with --where)")
    registry = _registry_from_env()
    try:
        spec = None if all_jobs else registry.get(job_name)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc
    if where:
        conds = _parsed_where(where)
        target = ALL_JOBS if spec is None else spec.name
        who = "every job class taking " + ", ".join(sorted({c.arg for c in conds}))
        name = who if spec is None else spec.name
        undo = f"asyncjobs jobs enable {'--all-jobs' if spec is None else spec.name}"
        undo += "".join(f" --where {shlex.quote(c.text)}" for c in conds)  # pasteable as is
        if stop:
            change = _with_app(
                lambda app: app.flags.disable_where(
                    target, *conds, actor=actor, reason=reason, until=end
                )
            )
            ends = (
                f" until {_utc(change.expires_at)}, then it ends by itself"
                if (change.expires_at)
                else ""
            )
            if not change.changed:
                click.echo(f"{name}: the rule {change.rule} is already in force; nothing changed")
                return
            click.echo(
                f"{name}: jobs with {change.rule} are stopped{ends}. Their enqueues return None "
                f"and their queued copies are skipped by workers (within ASYNCJOBS_FLAG_TTL); "
                f"other jobs run. Undo: {undo}"
            )
            return
        change = _with_app(
            lambda app: app.flags.enable_where(target, *conds, actor=actor, reason=reason)
        )
        if change.changed:
            click.echo(f"{name}: the rule {change.rule} is removed; those jobs run again.")
            return
        rules = _with_app(lambda app: app.flags.rules(target))
        listed = "; ".join(r.text for r in rules) or "none"
        raise click.ClickException(
            f"{name} has no rule {rule_text(conds)} (its rules: {listed}); nothing changed"
        )
    assert spec is not None
    click.echo(_describe(_change(spec.flag, stop, actor, reason, end)))
    if stop:
        click.echo(
            f"{spec.name} is stopped: new enqueues return None and queued copies are skipped "
            f"by workers (within ASYNCJOBS_FLAG_TTL). Undo: asyncjobs jobs enable {spec.name}"
        )
        return
    click.echo(f"{spec.name} runs: enqueues go through and workers run it.")
    if _app().settings.database_url is not None:
        from ._status import rules_of

        rules = rules_of(spec, _with_app(lambda app: app.flags.rules()))
        if rules:
            click.echo(
                f"note: {len(rules)} argument rule(s) still stop some of its jobs: "
                + "; ".join(r.text for r in rules)
                + f" (remove one: asyncjobs jobs enable {spec.name} --where '...')"
            )


@jobs.command("disable")
@click.argument("job_name", required=False)
@_where
@click.option("--all-jobs", is_flag=True, help="With --where: every job class taking it.")
@_for
@_until
@_reason
@_actor
def jobs_disable(
    job_name: str | None,
    where: tuple[str, ...],
    all_jobs: bool,
    for_: str | None,
    until: str | None,
    reason: str | None,
    actor: str | None,
) -> None:
    """Stop JOB: turn its disable_<job> flag on (with --where: add an argument rule that
    stops only the matching jobs). Enqueues are rejected, queued ones skipped."""
    end = _stop_end(for_, until)
    _switch_job(job_name, True, actor, reason, where, all_jobs, end)


@jobs.command("enable")
@click.argument("job_name", required=False)
@_where
@click.option("--all-jobs", is_flag=True, help="With --where: remove an all-jobs rule.")
@_reason
@_actor
def jobs_enable(
    job_name: str | None,
    where: tuple[str, ...],
    all_jobs: bool,
    reason: str | None,
    actor: str | None,
) -> None:
    """Let JOB run again: turn its disable_<job> flag off (with --where: remove that
    argument rule; exits 1 if it has no such rule)."""
    _switch_job(job_name, False, actor, reason, where, all_jobs)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--reason", "-r", help="Why; logged with job.cancelled and kept beside the job.")
@_actor
@click.option("--queue", help="The queue the job waits in (default: every queue the jobs name).")
def jobs_cancel(job_id: str, reason: str | None, actor: str | None, queue: str | None) -> None:
    """Cancel JOB_ID: a queued or deferred job is removed; a running one is stopped where it
    runs (not retried, not dead-lettered). Exits 1 if no such job is queued or running."""
    result = _with_app(lambda app: app.cancel(job_id, reason=reason, actor=actor, queue=queue))
    if result.outcome in ("not_found", "finished"):  # nothing to cancel: an error line
        click.echo(f"Error: {result}", err=True)
        sys.exit(1)
    click.echo(str(result))


@jobs.command("throttle", context_settings={"ignore_unknown_options": True})
@click.argument("job_name")
@click.argument("rate", required=False)
@click.option("--off", is_flag=True, help="Remove JOB's throttle instead.")
@_reason
@_actor
def jobs_throttle(
    job_name: str, rate: str | None, off: bool, reason: str | None, actor: str | None
) -> None:
    """Let workers together start at most RATE jobs of JOB (10/s, 600/m, 5000/h); the
    rest wait, deferred, not counted as tries. --off removes it."""
    if off == (rate is not None):
        raise click.UsageError(
            "give a RATE such as 10/s, or --off to remove the throttle (not both)"
        )
    from ._controls import parse_rate

    if rate is not None:
        try:  # a malformed RATE is a wrong command line (status 2), said before connecting
            parse_rate(rate)
        except ControlError as exc:
            raise click.UsageError(str(exc)) from exc

    async def go(app: App) -> Any:
        if rate is None:
            return await app.flags.unthrottle(job_name, actor=actor, reason=reason)
        return await app.flags.throttle(job_name, rate, actor=actor, reason=reason)

    change = _with_app(go)
    job = change.target
    if not change.changed:
        now = f"throttled to {change.now}" if change.now else "not throttled"
        click.echo(f"{job} is already {now}; nothing changed")
        return
    was = f"was {change.was}" if change.was else "was not throttled"
    if change.now is None:
        click.echo(f"{job} is no longer throttled ({was}): workers start its jobs as they come.")
        return
    click.echo(
        f"{job} is throttled to {change.now} ({was}): workers together start at most that "
        "many; the rest wait in the queue, deferred, not counted as tries. Workers apply it "
        "at once (within ASYNCJOBS_FLAG_TTL if notifications are lost). "
        f"Undo: asyncjobs jobs throttle {job} {change.was or '--off'}"
    )


@cli.group()
def queues() -> None:
    """Pause and resume queues (workers stop starting their jobs; enqueues go on)."""


def _switch_queue(queue: str, pause: bool, actor: str | None, reason: str | None) -> None:
    async def go(app: App) -> tuple[Any, list[str]]:
        from ._status import watched_queues

        switch = app.flags.pause_queue if pause else app.flags.resume_queue
        change = await switch(queue, actor=actor, reason=reason)
        return change, watched_queues(app)

    change, known = _with_app(go)
    if not change.changed:
        click.echo(f"queue {queue} is already {'paused' if pause else 'running'}; nothing changed")
    elif pause:
        click.echo(
            f"queue {queue} is paused: workers start none of its jobs (running ones finish); "
            "enqueues are still accepted and wait. Workers stop claiming at once (within "
            f"ASYNCJOBS_FLAG_TTL if notifications are lost). Undo: asyncjobs queues resume {queue}"
        )
    else:
        click.echo(f"queue {queue} is resumed: workers start its jobs again.")
    if pause and queue not in known:
        click.echo(
            f"warning: no setting or registered job names queue {queue!r} (known: "
            f"{', '.join(known)}); a worker reading it is paused all the same. A typo?",
            err=True,
        )


@queues.command("pause")
@click.argument("queue")
@_reason
@_actor
def queues_pause(queue: str, reason: str | None, actor: str | None) -> None:
    """Stop workers from starting jobs of QUEUE; enqueues are still accepted."""
    _switch_queue(queue, True, actor, reason)


@queues.command("resume")
@click.argument("queue")
@_reason
@_actor
def queues_resume(queue: str, reason: str | None, actor: str | None) -> None:
    """Let workers start jobs of QUEUE again."""
    _switch_queue(queue, False, actor, reason)


@cli.group()
def flags() -> None:
    """Raw feature flags (a flag that is ON is enabled; disable_<job> ON stops <job>)."""


@flags.command("list")
@_json_option("the flags")
def flags_list(as_json: bool) -> None:
    """Every flag: state, counters of rejected enqueues and skipped runs, last change."""
    from ._status import flag_record, rule_record

    registry = _registry_from_env()

    async def read(app: App) -> tuple[list[Any], list[Any]]:
        return await app.flags.list(), await app.flags.rules()

    rows, rules = _with_app(read)
    if as_json:
        names = registry.names()
        _print_json(
            {
                "flags": [flag_record(f, names) for f in rows],
                "rules": [rule_record(r) for r in rules],
            }
        )
        return
    if not rows and not rules:
        click.echo("no flags set")
        return
    names = registry.names()
    if rows:
        click.echo(
            f"{'flag':34} {'state':5} {'rejected':>9} {'skipped':>8}  {'changed (UTC)':19} "
            f"{'by':12} reason"
        )
    for f in rows:
        note = ""
        job = job_of_flag(f.name)
        if job is not None and names and job not in names:
            note = "  [matches no registered job: renamed or removed?]"
        if f.enabled and f.expires_at is not None:
            note += f"  [until {_utc(f.expires_at)}]"
        changed = f.updated_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{f.name:34} {'ON' if f.enabled else 'off':5} {f.rejected:>9} {f.skipped:>8}  "
            f"{changed:19} {f.updated_by[:12]:12} {f.reason or ''}{note}"
        )
    if rules:
        click.echo(f"argument rules: {len(rules)}")
        for r in rules:
            click.echo(f"  {r.flag:32} {_rule_line(r)}")
    if not names:
        click.echo("(set ASYNCJOBS_IMPORTS to check the flags against registered jobs)")


@flags.command("enable")
@click.argument("flag")
@_for
@_until
@_reason
@_actor
def flags_enable(
    flag: str, for_: str | None, until: str | None, reason: str | None, actor: str | None
) -> None:
    """Turn FLAG on (with --for/--until: it turns itself off again then)."""
    end = _stop_end(for_, until)
    click.echo(_describe(_change(flag, True, actor, reason, end)))
    _warn_if_no_such_job(flag)


def _warn_if_no_such_job(flag: str) -> None:
    """A ``disable_<job>`` flag for a job this process does not know: probably a typo."""
    job = job_of_flag(flag)
    if job is None:
        return
    names = _registry_from_env().names()
    if not names:
        click.echo(
            f"warning: could not check that a job {job!r} exists: set ASYNCJOBS_IMPORTS to "
            "the modules that define your jobs",
            err=True,
        )
    elif job not in names:
        click.echo(
            f"warning: no registered job is named {job!r} (jobs: {', '.join(sorted(names))}); "
            "the flag stops nothing unless such a job exists. A typo?",
            err=True,
        )


@flags.command("disable")
@click.argument("flag")
@_reason
@_actor
def flags_disable(flag: str, reason: str | None, actor: str | None) -> None:
    """Turn FLAG off."""
    click.echo(_describe(_change(flag, False, actor, reason)))


@flags.command("history")
@click.argument("flag", required=False)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="How many changes to show.",
)
@_json_option("the changes")
def flags_history(flag: str | None, limit: int, as_json: bool) -> None:
    """Changes to FLAG (or to every flag), newest first."""
    from ._status import flag_event_record

    events = _with_app(lambda app: app.flags.history(flag, limit=limit), imports=False)
    if as_json:
        _print_json({"history": [flag_event_record(e) for e in events]})
        return
    if not events:
        click.echo("no changes recorded")
        return
    for e in events:
        old = {None: "(new)", True: "on", False: "off"}[e.old_value]
        new = "on" if e.new_value else "off"
        if e.detail:
            new = f"{new} {e.detail}"
        reason = f"  reason: {e.reason}" if e.reason else ""
        rule = f"  rule {e.rule}" if e.rule else ""
        end = f"  until {_utc(e.expires_at)}" if e.expires_at is not None else ""
        click.echo(
            f"{e.at:%Y-%m-%d %H:%M:%S}  {e.name:34} {old:>5} -> {new:3}  by {e.actor}"
            f"{rule}{end}{reason}"
        )


@cli.group()
def dead() -> None:
    """Dead letters: jobs that ran out of tries (kept in PostgreSQL)."""


@dead.command("list")
@click.option("--job", help="Only this job's dead letters.")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1), help="How many to show."
)
@_json_option("the dead letters")
def dead_list(job: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    from ._status import dead_letter_record

    letters = _with_app(lambda app: app.dead.list(job, limit=limit))
    if as_json:
        _print_json({"dead_letters": [dead_letter_record(d) for d in letters]})
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'id':>6}  {'job':28} {'tries':>5}  {'last failed (UTC)':19}  error")
    for d in letters:
        # One row each: an error's message may span lines (`dead show ID` has it whole).
        error = " ".join(d.error.split())
        click.echo(
            f"{d.id:>6}  {d.job_name:28} {d.tries:>5}  {d.last_failed_at:%Y-%m-%d %H:%M:%S}  "
            f"{error[:80]}"
        )


@dead.command("show")
@click.argument("dead_id", metavar="ID", type=int)
def dead_show(dead_id: int) -> None:
    """One dead letter in full, with its traceback."""
    d = _with_app(lambda app: app.dead.get(dead_id))
    args = "(redacted)" if d.redacted else f"{d.args!r} {d.kwargs!r}"
    click.echo(f"dead letter {d.id}: {d.job_name} (job id {d.job_id}, queue {d.queue})")
    click.echo(f"arguments:     {args}")
    click.echo(f"tries:         {d.tries}")
    click.echo(f"first failed:  {d.first_failed_at:%Y-%m-%d %H:%M:%S} UTC")
    click.echo(f"last failed:   {d.last_failed_at:%Y-%m-%d %H:%M:%S} UTC")
    click.echo(f"error:         {d.error}")
    click.echo(d.traceback.rstrip())


@dead.command("retry")
@click.argument("dead_id", metavar="ID", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Retry every dead letter (of --job).")
@click.option("--job", help="With --all: only this job's.")
def dead_retry(dead_id: int | None, all_: bool, job: str | None) -> None:
    """Enqueue ID (or --all) again; the record goes when the job succeeds."""
    if (dead_id is None) == (not all_):
        raise click.UsageError("give one dead letter ID, or --all")
    if all_:
        done = _with_app(lambda app: app.dead.retry_all(job))
        queued = sum(j is not None for _, j in done)
        click.echo(f"re-enqueued {queued} of {len(done)} dead letter(s)")
        return
    assert dead_id is not None
    job_ = _with_app(lambda app: app.dead.retry(dead_id))
    if job_ is None:
        click.echo(f"dead letter {dead_id} was not enqueued (rejected, e.g. by the kill switch)")
    else:
        click.echo(f"re-enqueued dead letter {dead_id} as job {job_.job_id}")


@dead.command("purge")
@click.option("--older-than", help="Only those that last failed longer ago, e.g. 30d, 12h.")
@click.option("--job", help="Only this job's.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when not on a terminal).")
def dead_purge(older_than: str | None, job: str | None, dry_run: bool, yes: bool) -> None:
    """Delete dead letters (asks first; --dry-run shows what would go)."""
    from ._retries import parse_duration

    try:
        age = parse_duration(older_than) if older_than is not None else None
    except AsyncJobsError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    letters = _with_app(lambda app: app.dead.matching(age, job=job))
    if not letters:
        click.echo("no dead letters match")
        return
    if dry_run:
        for d in letters:
            when = f"{d.last_failed_at:%Y-%m-%d %H:%M:%S}"
            click.echo(f"would purge {d.id}: {d.job_name} (last failed {when})")
        click.echo(f"{len(letters)} dead letter(s) would be purged (dry run: none was)")
        return
    what = (
        f"{len(letters)} dead letter(s)"
        + (f" of {job}" if job else "")
        + (f" older than {older_than}" if older_than else "")
    )
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(
                f"this would delete {what}; pass --yes to confirm (or --dry-run to look first)"
            )
        click.confirm(f"Delete {what}? This cannot be undone", abort=True, err=True)
    ids = [d.id for d in letters]
    count = _with_app(lambda app: app.dead.purge(age, job=job, ids=ids))
    click.echo(f"purged {count} dead letter(s)")


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the reconcilers instead.")
@_json_option("the list of reconcilers (with --list)")
def reconcile(name: str | None, list_: bool, as_json: bool) -> None:
    """Run reconciler NAME once, now, and print its counts (or --list them)."""
    from ._status import ReconcilerState

    if as_json and not list_ and name is not None:
        raise click.UsageError("--json goes with --list (a run prints one line of counts)")
    app = _app()
    if list_ or name is None:
        if not len(app.reconcilers) and not as_json:
            click.echo("no reconcilers registered; set ASYNCJOBS_IMPORTS to their modules")
            return

        stopped = _stopped_flags() if len(app.reconcilers) else None
        if as_json:
            states = [ReconcilerState.of(rec, stopped).as_dict() for rec in app.reconcilers]
            _print_json({"reconcilers": states})
            return
        click.echo(f"{'reconciler':28} {'job':24} {'schedule':26} {'state':8} flag")
        for rec in app.reconcilers:
            state = "?" if stopped is None else ("STOPPED" if stopped.get(rec.flag) else "running")
            click.echo(
                f"{rec.name:28} {rec.job_name:24} {rec.describe_schedule():26} {state:8} {rec.flag}"
            )
        return
    try:
        rec = app.reconcilers.get(name)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc
    result = _with_app(rec.run)
    click.echo(
        f"{result.name}: {result.rows} pending row(s) scanned, {result.enqueued} job(s) "
        f"enqueued, {result.duplicates} already queued, {result.rejected} rejected "
        f"(kill switch or middleware), in {result.duration_ms:.0f} ms"
    )


@cli.command()
def shell() -> None:
    """An asyncio Python shell with the App connected: `await flags.enable(...)` works.

    In scope: app, flags (app.flags), enqueue, asyncjobs, and every registered job.
    """
    from ._shell import run_shell

    _registry_from_env()
    run_shell()


@cli.command()
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Apply asyncjobs' schema once started (so `asyncjobs migrate` has nothing to do).",
)
@click.option(
    "--port-redis", type=click.IntRange(1, 65535), help="Redis's port (default: a free one)."
)
@click.option(
    "--port-postgres",
    type=click.IntRange(1, 65535),
    help="PostgreSQL's port (default: a free one).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the export lines to this file once the servers are up (`source` it).",
)
def dev(
    migrate: bool, port_redis: int | None, port_postgres: int | None, env_file: str | None
) -> None:
    """Start throwaway Redis and PostgreSQL and print the variables that point at them.

    Runs until Ctrl-C, then stops both servers and deletes their data (and the env file).
    With --port-redis/--port-postgres the variables are the same every run.
    """
    from ._services import EmbeddedServices, PortInUse, wait_forever

    try:
        services = EmbeddedServices(redis_port=port_redis, postgres_port=port_postgres).start()
    except PortInUse as exc:
        option = "--port-redis" if exc.server == "Redis" else "--port-postgres"
        raise click.ClickException(
            f"{exc}: choose another with {option}, or leave {option} out for a free one"
        ) from exc
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from exc
    except RuntimeError as exc:  # a server did not start, e.g. its port is taken
        raise click.ClickException(f"the servers did not start: {exc}") from exc
    try:
        if migrate:
            _with_app(lambda app: app.migrate(), environ=services.environ)
        exports = [f"export {key}={value}" for key, value in services.environ.items()]
        if env_file:  # whole or not at all: another shell may source it at any moment
            partial = f"{env_file}.partial"
            with open(partial, "w") as out:
                out.write("\n".join(exports) + "\n")
            os.replace(partial, env_file)
        state = "running, asyncjobs' schema applied" if migrate else "running"
        click.echo(f"# Embedded Redis and PostgreSQL are {state}. In another shell:")
        for line in exports:
            click.echo(line)
        if env_file:
            click.echo(f"# (also in {env_file}: source {env_file})")
        click.echo("# Ctrl-C stops them and deletes their data.")
        sys.stdout.flush()
        wait_forever()
    finally:
        services.stop()
        if env_file:
            with contextlib.suppress(OSError):
                os.remove(env_file)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", default=8089, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Show no actions; refuse every POST.")
def web(host: str, port: int, read_only: bool) -> None:
    """Serve the dashboard (needs asyncjobs[web]), without authentication: on a loopback
    address only. Mount asyncjobs.web.dashboard(auth=...) in a web app to serve it further."""
    import ipaddress

    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise click.ClickException(
                f"--host {host}: the standalone dashboard has no authentication, so it serves "
                "on a loopback address only (127.0.0.1, ::1, localhost). To serve it further, "
                "mount asyncjobs.web.dashboard(auth=...) in your web app."
            )
    try:
        import uvicorn

        from .web import dashboard
    except ImportError as exc:
        raise click.ClickException(str(exc).split("\n")[0]) from exc
    _check_port(host, port)
    app = _app()
    pages = dashboard(app, read_only=read_only)
    config = uvicorn.Config(pages, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    mode = "read-only, " if read_only else ""
    click.echo(
        f"asyncjobs dashboard on http://{_url_host(host)}:{port}/ ({mode}no authentication: "
        "listening on this machine only). Ctrl-C stops it."
    )

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await app.close()

    _run(serve)


def _check_port(host: str, port: int) -> None:
    """A :class:`click.ClickException` naming ``--port`` if ``host:port`` cannot be bound
    (taken, or not allowed), before anything says the dashboard is up."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise click.ClickException(
            f"--port {port}: cannot listen on {_url_host(host)}:{port} ({exc.strerror or exc}); "
            "pick another port"
        ) from exc


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def main() -> None:
    """The ``asyncjobs`` command: :func:`cli`, with every error said in one line.

    A wrong option or argument is one ``Error: ...`` line naming it (no usage
    block), exit status 2; any other failure one ``Error: ...`` line, status 1.
    """
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            # A group given no command (`asyncjobs jobs`): its help, which lists them.
            click.echo(exc.ctx.get_help())
            sys.exit(exc.exit_code)
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted: nothing was changed.", err=True)
        sys.exit(1)
