"""The dashboard's pages and actions (see :mod:`asyncjobs.web` for what each shows).

Every request passes :meth:`Dashboard.endpoint`: the actor (``auth``; 401
without one), then for a POST the read-only refusal (403) and the CSRF check
(403), then the page, whose bad input raises :class:`Problem` (a 400 or 404
page saying what was wrong or not found). Reads go through
:class:`~asyncjobs._web.reads.Outages`: a server that does not answer is named
in a banner. A POST answers with a redirect (303) to the page it came from,
carrying a one-line notice signed with the dashboard's key: a page shows only
notices it can verify, so a link cannot plant one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import _logs as logs
from .._app import App, get_app
from .._arq import timestamp_ms
from .._cancel import cancel, check_job_id
from .._controls import Control
from .._exceptions import AsyncJobsError, CancelError, RedisUnavailableError
from .._jobs import JobSpec
from .._naming import job_of_flag
from .._reconcilers import last_runs
from .._retries import DeadLetters
from .._status import (
    ReconcilerState,
    read_redis,
    rules_of,
    stopped_jobs,
    watched_queues,
)
from .._throughput import Minute, per_minute
from . import reads
from .reads import PAGE_SIZE, ActionNotDone, Outages, postgres_action, redis_action
from .security import CSRF_COOKIE, CSRF_FIELD, Auth, Tokens, actor_of

_log = structlog.get_logger("asyncjobs.web")

REFRESH_S = 5
REFRESH_JS = (
    "setInterval(function(){var a=document.activeElement;"
    "if(a&&(a.tagName==='INPUT'||a.tagName==='TEXTAREA'))return;"
    "for(const i of document.querySelectorAll('input[type=text]'))if(i.value)return;"
    f"location.reload();}},{REFRESH_S * 1000});"
)
"""Reloads the page every few seconds, unless the operator is typing in a form."""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(REFRESH_JS.encode()).digest()).decode()
HEADERS = {
    # The one inline script is allowed by its hash; nothing else runs, nothing is framed.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        f"script-src 'sha256-{_SCRIPT_HASH}'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
_PAGE = re.compile(r"^[1-9][0-9]{0,5}$")
MAX_FORM_BYTES = 16_384


class Problem(Exception):
    """Bad input: rendered as a page with ``status`` saying ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class View:
    """One request as a page sees it."""

    request: Request
    actor: str
    token: str
    new_token: bool
    outages: Outages
    form: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The path the dashboard is mounted at (no trailing slash)."""
        return str(self.request.scope.get("root_path", "")).rstrip("/")

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def page(self) -> int:
        """The ``page`` query parameter (from 1); a malformed one is a 400."""
        text = self.query("page") or "1"
        if not _PAGE.match(text):
            raise Problem(400, f"page must be a whole number from 1, not {text!r}")
        return int(text)

    def job_filter(self) -> str | None:
        """The ``job`` filter; a malformed one is a 400."""
        text = self.query("job") or None
        if text is not None and not _NAME.match(text):
            raise Problem(400, f"{text!r} is not a job name")
        return text


Handler = Callable[["Dashboard", View], Awaitable[Response]]


class Dashboard:
    """The pages of one dashboard over one App."""

    def __init__(self, app: App, auth: Auth | None, read_only: bool) -> None:
        self.app = app
        self.auth = auth
        self.read_only = read_only
        self.tokens = Tokens()
        self.env = Environment(
            loader=PackageLoader("asyncjobs._web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.filters["when"] = _when
        self.env.filters["ago"] = _ago
        self.env.filters["unixwhen"] = lambda t: _when(datetime.fromtimestamp(t, UTC))
        self.env.filters["tojson_text"] = lambda v: json.dumps(v, ensure_ascii=False)
        self.env.filters["job_of"] = job_of_flag

    # -- the frame every request passes ------------------------------------

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            actor = await actor_of(self.auth, request)
            if actor is None:
                return self._plain(401, "Not signed in: this dashboard needs authentication.")
            cookie = request.cookies.get(CSRF_COOKIE)
            fresh = not self.tokens.valid(cookie)
            token = self.tokens.new() if fresh else str(cookie)
            view = View(request, actor, token, fresh, Outages(self.app))
            if request.method == "POST":
                if self.read_only:
                    return self._plain(403, "This dashboard is read-only: no actions.")
                view.form = await _form(request)
                if not self.tokens.matches(cookie, view.form.get(CSRF_FIELD)):
                    return self._plain(
                        403, "The form's CSRF token is missing or stale: reload the page."
                    )
            try:
                return await handler(self, view)
            except Problem as problem:
                return self._error(view, problem.status, problem.message)
            except RedisUnavailableError as exc:  # an action that also writes to Redis
                view.outages.down["Redis"] = reads.reason("Redis", str(exc))
                return self._error(view, 503, "Redis is unreachable: nothing changed.")
            except ActionNotDone as exc:
                return self._error(view, 503, f"{exc} is unreachable: nothing changed.")

        return run

    def render(self, view: View, template: str, *, status: int = 200, **context: Any) -> Response:
        """``template`` with the frame's context: base path, actor, token, banners, notice."""
        notice = view.query("msg")
        if not self.tokens.sealed(notice, view.query("sig")):  # a link may carry any ?msg=
            notice = None
        html = self.env.get_template(template).render(
            base=view.base,
            actor=view.actor,
            csrf=view.token,
            read_only=self.read_only,
            authenticated=self.auth is not None,
            down=view.outages.down,
            notice=notice,
            acting=view.request.method == "POST",
            refresh_js=REFRESH_JS if status == 200 else None,
            path=view.request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=HEADERS)
        if view.new_token:
            response.set_cookie(
                CSRF_COOKIE,
                view.token,
                path=view.base or "/",
                httponly=True,
                samesite="strict",
                secure=view.request.url.scheme == "https",
            )
        return response

    def _error(self, view: View, status: int, message: str) -> Response:
        return self.render(
            view, "error.html", status=status, title=_status(status), message=message
        )

    def _plain(self, status: int, message: str) -> Response:
        html = self.env.get_template("refused.html").render(title=_status(status), message=message)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def done(self, view: View, to: str, message: str) -> Response:
        """The answer to a POST: back to ``to`` (a path under the dashboard) with a notice."""
        query = urlencode({"msg": message, "sig": self.tokens.seal(message)})
        return RedirectResponse(f"{view.base}{to}?{query}", 303)

    def audit(self, view: View, action: str, **about: Any) -> None:
        """Log a queue or dead-letter action with its actor."""
        _log.info(logs.DASHBOARD_ACTION, action=action, actor=view.actor, **about)

    # -- pages ---------------------------------------------------------------

    async def overview(self, view: View) -> Response:
        o = view.outages
        redis_part = await o.redis(lambda: read_redis(self.app))
        queues, workers = redis_part if redis_part is not None else (None, None)
        minutes = await o.redis(self._minutes)
        flags = await o.postgres(self.app.flags.list)
        dead = await o.postgres(DeadLetters(self.app).counts)
        controls = await o.postgres(self.app.flags.list_controls)
        return self.render(
            view,
            "overview.html",
            title="Overview",
            queues=queues,
            paused=_paused(controls),
            throttles=None if controls is None else [c for c in controls if c.rate is not None],
            workers=workers,
            chart=None if minutes is None else chart(minutes),
            stopped=None if flags is None else stopped_jobs(flags),
            dead=dead,
        )

    async def _minutes(self) -> list[Minute]:
        return await per_minute(await self.app.redis())

    async def jobs(self, view: View) -> Response:
        flags = await view.outages.postgres(self.app.flags.list)
        by_name = {} if flags is None else {f.name: f for f in flags}
        rows = [(spec, self._queue_of(spec), by_name.get(spec.flag)) for spec in self.app.registry]
        rules = await view.outages.postgres(self.app.flags.rules)
        ruled = {spec.name: rules_of(spec, rules or []) for spec in self.app.registry}
        return self.render(
            view, "jobs.html", title="Jobs", rows=rows, flags_known=flags is not None, ruled=ruled
        )

    async def job(self, view: View) -> Response:
        spec = self._spec(view.request.path_params["name"])
        flags = await view.outages.postgres(self.app.flags.list)
        flag = None if flags is None else next((f for f in flags if f.name == spec.flag), None)
        history = await view.outages.postgres(lambda: self.app.flags.history(spec.flag))
        rules = await view.outages.postgres(self.app.flags.rules)
        return self.render(
            view,
            "job.html",
            rules=None if rules is None else rules_of(spec, rules),
            title=spec.name,
            spec=spec,
            queue=self._queue_of(spec),
            options=_options(spec),
            flag=flag,
            flags_known=flags is not None,
            history=history,
        )

    async def stop_job(self, view: View) -> Response:
        spec = self._spec(view.request.path_params["name"])
        reason = view.form.get("reason", "").strip()
        if not reason:
            raise Problem(400, "say why you stop this job: the reason is kept in the audit trail")
        return await self._set_flag(view, spec, True, reason)

    async def resume_job(self, view: View) -> Response:
        spec = self._spec(view.request.path_params["name"])
        reason = view.form.get("reason", "").strip() or None
        return await self._set_flag(view, spec, False, reason)

    async def _set_flag(
        self, view: View, spec: JobSpec, stop: bool, reason: str | None
    ) -> Response:
        change = self.app.flags.enable if stop else self.app.flags.disable
        await postgres_action(
            view.outages, lambda: change(spec.flag, actor=view.actor, reason=reason)
        )
        state = "stopped" if stop else "running again"
        return self.done(view, f"/jobs/{spec.name}", f"{spec.name} {state}")

    async def queues(self, view: View) -> Response:
        stats = await view.outages.redis(lambda: read_redis(self.app))
        controls = await view.outages.postgres(self.app.flags.list_controls)
        return self.render(
            view,
            "queues.html",
            title="Queues",
            queues=None if stats is None else stats[0],
            paused=_paused(controls),
        )

    async def queue(self, view: View) -> Response:
        name = view.request.path_params["name"]
        page = view.page()
        found = await view.outages.redis(lambda: reads.queue_page(self.app, name, page))
        if found is not None and found[0] == 0 and name not in watched_queues(self.app):
            raise Problem(404, f"no queue named {name!r}: no job names it and it holds no jobs")
        size, jobs = found if found is not None else (None, None)
        pages = None if size is None else max(1, -(-size // PAGE_SIZE))
        if pages is not None and page > pages:
            raise Problem(404, f"no page {page} of queue {name!r}: it has {_count(pages, 'page')}")
        paused = _paused(await view.outages.postgres(self.app.flags.list_controls))
        return self.render(
            view, "queue.html", title=f"Queue {name}", queue=name, size=size, jobs=jobs,
            page=page, pages=pages, paused=(paused or {}).get(name),
        )  # fmt: skip

    async def delete_job(self, view: View) -> Response:
        queue, job_id = view.request.path_params["name"], self._job_id(view)
        try:
            result = await cancel(
                self.app, job_id, reason="deleted in the dashboard", actor=view.actor, queue=queue
            )
        except CancelError as exc:
            raise Problem(503, str(exc)) from exc
        if result.outcome == "not_found":
            raise Problem(404, f"no job {job_id!r} in queue {queue!r}")
        self.audit(view, "job.delete", job_id=job_id, queue=queue, outcome=result.outcome)
        return self.done(view, f"/queues/{queue}", str(result))

    async def run_job_now(self, view: View) -> Response:
        queue, job_id = view.request.path_params["name"], self._job_id(view)
        moved = await redis_action(
            view.outages, lambda: reads.run_now(self.app, queue, job_id, timestamp_ms())
        )
        if not moved:
            raise Problem(404, f"no deferred job {job_id!r} in queue {queue!r}")
        self.audit(view, "job.run_now", job_id=job_id, queue=queue)
        return self.done(view, f"/queues/{queue}", f"job {job_id} is due now")

    async def running(self, view: View) -> Response:
        jobs = await view.outages.redis(lambda: reads.running_jobs(self.app))
        return self.render(view, "running.html", title="Running", jobs=jobs)

    async def dead(self, view: View) -> Response:
        job, page = view.job_filter(), view.page()
        store = DeadLetters(self.app)
        letters = await view.outages.postgres(
            lambda: store.list(job, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        )
        counts = await view.outages.postgres(store.counts)
        more = letters is not None and len(letters) > PAGE_SIZE
        return self.render(
            view, "dead.html", title="Dead letters", job=job, page=page, more=more,
            letters=None if letters is None else letters[:PAGE_SIZE], counts=counts,
        )  # fmt: skip

    async def dead_letter(self, view: View) -> Response:
        letter = await self._letter(view)
        return self.render(view, "dead_letter.html", title=f"Dead letter {letter.id}", d=letter)

    async def retry_dead(self, view: View) -> Response:
        letter = await self._letter(view)
        store = DeadLetters(self.app)
        try:
            job = await postgres_action(view.outages, lambda: store.retry(letter.id))
        except AsyncJobsError as exc:
            raise Problem(409, str(exc)) from exc
        self.audit(view, "dead.retry", dead_letter_id=letter.id, job_name=letter.job_name,
                   job_id=None if job is None else job.job_id)  # fmt: skip
        said = "rejected (stopped or a duplicate)" if job is None else f"enqueued as {job.job_id}"
        return self.done(view, "/dead", f"dead letter {letter.id} retried: {said}")

    async def delete_dead(self, view: View) -> Response:
        letter = await self._letter(view)
        store = DeadLetters(self.app)
        await postgres_action(view.outages, lambda: store.purge(ids=[letter.id]))
        self.audit(view, "dead.delete", dead_letter_id=letter.id, job_name=letter.job_name)
        return self.done(view, "/dead", f"dead letter {letter.id} deleted")

    async def retry_all_dead(self, view: View) -> Response:
        job = _form_job(view)
        store = DeadLetters(self.app)
        done = await postgres_action(view.outages, lambda: store.retry_all(job))
        self.audit(view, "dead.retry_all", job_name=job, count=len(done))
        return self.done(view, "/dead", f"{_count(len(done), 'dead letter')} retried")

    async def purge_dead(self, view: View) -> Response:
        if view.request.method == "GET":  # the confirmation step
            if self.read_only:
                return self._plain(
                    403, "This dashboard is read-only: dead letters cannot be purged."
                )
            job = view.job_filter()
            matching = await view.outages.postgres(lambda: DeadLetters(self.app).matching(job=job))
            return self.render(
                view, "purge.html", title="Purge dead letters", job=job,
                count=None if matching is None else len(matching),
            )  # fmt: skip
        job = _form_job(view)
        if view.form.get("confirm") != "yes":
            raise Problem(400, "a purge needs its confirmation: use the purge page's button")
        store = DeadLetters(self.app)
        count = await postgres_action(view.outages, lambda: store.purge(job=job))
        self.audit(view, "dead.purge", job_name=job, count=count)
        return self.done(view, "/dead", f"{_count(count, 'dead letter')} purged")

    async def reconcilers(self, view: View) -> Response:
        flags = await view.outages.postgres(self.app.flags.list)
        states = None if flags is None else {f.name: f.enabled for f in flags}
        rows = [ReconcilerState.of(rec, states) for rec in self.app.reconcilers]
        names = [r.name for r in rows]
        runs = await view.outages.redis(lambda: last_runs(self.app, names))
        return self.render(
            view, "reconcilers.html", title="Reconcilers", rows=rows, runs=runs,
            started=lambda at: _when(datetime.fromtimestamp(at, UTC)),
        )  # fmt: skip

    async def run_reconciler(self, view: View) -> Response:
        name = view.request.path_params["name"]
        try:
            rec = self.app.reconcilers.get(name)
        except AsyncJobsError as exc:
            raise Problem(404, f"no reconciler named {name!r}") from exc
        job = await redis_action(view.outages, lambda: self.app.enqueue(rec.spec.name))
        self.audit(view, "reconciler.run_now", reconciler=name,
                   job_id=None if job is None else job.job_id)  # fmt: skip
        said = "enqueued" if job is not None else "rejected (stopped, or a run is queued)"
        return self.done(view, "/reconcilers", f"reconciler {name}: {said}")

    async def flags(self, view: View) -> Response:
        flags = await view.outages.postgres(self.app.flags.list)
        history = await view.outages.postgres(lambda: self.app.flags.history(limit=100))
        rules = await view.outages.postgres(self.app.flags.rules)
        return self.render(
            view, "flags.html", title="Flags", flags=flags, history=history,
            jobs=self.app.registry.names(), rules=rules,
        )  # fmt: skip

    async def flag(self, view: View) -> Response:
        name = view.request.path_params["name"]
        if not _NAME.match(name):
            raise Problem(404, f"no flag named {name!r}")
        flags = await view.outages.postgres(self.app.flags.list)
        history = await view.outages.postgres(lambda: self.app.flags.history(name, limit=500))
        flag = None if flags is None else next((f for f in flags if f.name == name), None)
        if flags is not None and flag is None and not history:
            raise Problem(404, f"no flag named {name!r}")
        return self.render(
            view, "flag.html", title=f"Flag {name}", name=name, flag=flag, history=history,
            job=job_of_flag(name),
        )  # fmt: skip

    # -- lookups that are a 404 when they find nothing ---------------------------

    def _spec(self, name: str) -> JobSpec:
        if name not in self.app.registry:
            raise Problem(404, f"no job named {name!r} is registered")
        return self.app.registry.get(name)

    def _queue_of(self, spec: JobSpec) -> str:
        return spec.queue or self.app.settings.queue_name

    def _job_id(self, view: View) -> str:
        try:
            return check_job_id(view.request.path_params["job_id"])
        except CancelError as exc:
            raise Problem(400, str(exc)) from exc

    async def _letter(self, view: View) -> Any:
        text = view.request.path_params["id"]
        if not text.isdigit() or len(text) > 18:
            raise Problem(404, f"no dead letter {text!r}: dead letters have numeric ids")
        store = DeadLetters(self.app)
        try:
            found = await view.outages.postgres(lambda: store.get(int(text)))
        except AsyncJobsError as exc:
            raise Problem(404, f"no dead letter {text}") from exc
        if found is None:
            raise Problem(503, "PostgreSQL is unreachable: the dead letter cannot be read")
        return found

    def routes(self) -> list[Route]:
        """Every page and action, under the mount path."""
        get, post = ["GET"], ["POST"]
        table: list[tuple[str, Handler, list[str]]] = [
            ("/", Dashboard.overview, get),
            ("/jobs", Dashboard.jobs, get),
            ("/jobs/{name}", Dashboard.job, get),
            ("/jobs/{name}/stop", Dashboard.stop_job, post),
            ("/jobs/{name}/resume", Dashboard.resume_job, post),
            ("/queues", Dashboard.queues, get),
            ("/queues/{name}", Dashboard.queue, get),
            ("/queues/{name}/jobs/{job_id}/delete", Dashboard.delete_job, post),
            ("/queues/{name}/jobs/{job_id}/now", Dashboard.run_job_now, post),
            ("/running", Dashboard.running, get),
            ("/dead", Dashboard.dead, get),
            ("/dead/retry-all", Dashboard.retry_all_dead, post),
            ("/dead/purge", Dashboard.purge_dead, ["GET", "POST"]),
            ("/dead/{id}", Dashboard.dead_letter, get),
            ("/dead/{id}/retry", Dashboard.retry_dead, post),
            ("/dead/{id}/delete", Dashboard.delete_dead, post),
            ("/reconcilers", Dashboard.reconcilers, get),
            ("/reconcilers/{name}/run", Dashboard.run_reconciler, post),
            ("/flags", Dashboard.flags, get),
            ("/flags/{name}", Dashboard.flag, get),
        ]
        return [Route(path, self.endpoint(h), methods=m) for path, h, m in table]


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Problem(400, "the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _form_job(view: View) -> str | None:
    job = view.form.get("job") or None
    if job is not None and not _NAME.match(job):
        raise Problem(400, f"{job!r} is not a job name")
    return job


def _options(spec: JobSpec) -> dict[str, Any]:
    return {
        "timeout": f"{spec.timeout}s" if spec.timeout is not None else "default",
        "tries": spec.max_tries,
        "unique": f"{spec.unique_for}s until {spec.unique_until}" if spec.unique_for else "no",
        "lock": "exclusive" if spec.exclusive else ("keyed" if spec.lock else "no"),
        "arguments": "redacted" if spec.redact_args else "kept",
    }


def _status(code: int) -> str:
    """``404 Not Found``: a page's title and heading for an answer that is not a 200."""
    return f"{code} {HTTPStatus(code).phrase}"


def _count(n: int, noun: str) -> str:
    """``1 dead letter``, ``2 dead letters``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(moment: datetime | float | None) -> str:
    if moment is None:
        return "—"
    seconds = (
        moment if isinstance(moment, float | int) else (datetime.now(UTC) - moment).total_seconds()
    )
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@dataclass(frozen=True, slots=True)
class Chart:
    """A bar chart of the last hour, drawn by the server as SVG rectangles."""

    width: int
    height: int
    bars: list[tuple[float, float, float, str, str]]
    """x, y, height, colour, tooltip."""
    peak: int
    succeeded: int
    failed: int


def chart(minutes: list[Minute], width: int = 720, height: int = 120) -> Chart:
    """Succeeded (green) and failed (red, stacked on top) per minute."""
    peak = max((m.succeeded + m.failed for m in minutes), default=0)
    step = width / max(1, len(minutes))
    bars = []
    for i, m in enumerate(minutes):
        label = f"{datetime.fromtimestamp(m.start, UTC):%H:%M} {m.succeeded} ok, {m.failed} failed"
        ok_h = height * m.succeeded / peak if peak else 0.0
        bad_h = height * m.failed / peak if peak else 0.0
        x = round(i * step, 1)
        if ok_h:
            bars.append((x, round(height - ok_h, 1), round(ok_h, 1), "#2e7d32", label))
        if bad_h:
            bars.append((x, round(height - ok_h - bad_h, 1), round(bad_h, 1), "#c62828", label))
    return Chart(
        width,
        height,
        bars,
        peak,
        sum(m.succeeded for m in minutes),
        sum(m.failed for m in minutes),
    )


def dashboard(
    app: App | None = None, *, auth: Auth | None = None, read_only: bool = False
) -> Starlette:
    """The dashboard as a Starlette app (see :func:`asyncjobs.web.dashboard`)."""
    pages = Dashboard(app if app is not None else get_app(), auth, read_only)

    async def not_found(request: Request, exc: Exception) -> Response:
        return pages._plain(404, f"There is no dashboard page at {request.url.path}.")

    return Starlette(routes=pages.routes(), exception_handlers={404: not_found})


def _paused(controls: list[Control] | None) -> dict[str, Control] | None:
    """The paused queues by name, from the controls (None: PostgreSQL could not be read)."""
    return None if controls is None else {c.target: c for c in controls if c.rate is None}
