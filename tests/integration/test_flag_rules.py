"""The kill switch beyond whole job classes: argument rules (--where) and timed stops
(--for/--until), against real Redis, PostgreSQL, worker processes and the CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from asyncjobs import App, FlagRuleError, Settings
from asyncjobs.flags import FlagEvent
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.conftest import cli as run_cli
from tests.helpers import eventually, recorded_runs, wait_for_event
from tests.rulejobs import charge_customer, email_customer, rebuild_index

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator named ops-oncall runs it."""
    return run_cli(*args, env={"USER": "ops-oncall", **env})


@pytest.fixture
def rule_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ASYNCJOBS_IMPORTS": "tests.rulejobs"}


async def test_a_where_rule_rejects_matching_enqueues_and_a_worker_skips_matching_queued_ones(
    settings: Settings, rule_env: dict[str, str], redis: aioredis.Redis
) -> None:
    async with App(settings) as app:
        await app.migrate()
        # Queued before the rule: by position, by keyword, and other customers.
        before = [
            await app.enqueue(charge_customer, 1, 42, _defer_by=1),
            await app.enqueue(charge_customer, invoice_id=2, customer_id=42, _defer_by=1),
            await app.enqueue(charge_customer, 3, 43, _defer_by=1),
        ]
        assert all(before)
        change = await app.flags.disable_where(
            charge_customer, customer_id=42, actor="alice", reason="customer 42 disputes"
        )
        assert (change.job, change.rule, change.changed) == (
            "charge_customer",
            "customer_id=42",
            True,
        )
        with capture_logs() as logs:
            assert await app.enqueue(charge_customer, 4, 42) is None
            assert await app.enqueue(charge_customer, 5, customer_id=43) is not None
            assert await app.enqueue(email_customer, 42) is not None  # another class
        rejected = [e for e in logs if e["event"] == "job.rejected"]
        assert [(e["job"], e["reason"], e["rule"]) for e in rejected] == [
            ("charge_customer", "rule", "customer_id=42")
        ]
        with WorkerProcess(rule_env, cwd=ROOT) as worker:
            skipped = await wait_for_event(worker, "job.skipped", count=2, within=30)
            runs = await recorded_runs(redis, 3)
        assert {s["job_id"] for s in skipped} == {before[0].job_id, before[1].job_id}  # type: ignore[union-attr]
        assert {(s["reason"], s["rule"]) for s in skipped} == {("rule", "customer_id=42")}
        assert sorted((r["job"], r["args"][0]) for r in runs) == [
            ("charge_customer", 3),
            ("charge_customer", 5),
            ("email_customer", 42),
        ]
        (rule,) = await app.flags.rules()
        assert (rule.text, rule.rejected, rule.skipped) == ("customer_id=42", 1, 2)
        (event,) = await app.flags.history("disable_charge_customer")
        assert (event.rule, event.actor, event.reason, event.new_value) == (
            "customer_id=42",
            "alice",
            "customer 42 disputes",
            True,
        )
        removed = await app.flags.enable_where("charge_customer", "customer_id = 42", actor="bob")
        assert removed.changed
        assert await app.enqueue(charge_customer, 6, 42) is not None
        assert next((e.rule, e.actor, e.new_value) for e in await app.flags.history()) == (
            "customer_id=42",
            "bob",
            False,
        )


async def test_rules_compare_numbers_ranges_lists_and_apply_to_every_class_taking_the_argument(
    settings: Settings, redis: aioredis.Redis
) -> None:
    async with App(settings) as app:
        await app.migrate()
        await app.flags.disable_where(charge_customer, "invoice_id>=100", region="us")
        await app.flags.disable_where(charge_customer, "customer_id in (7, 8)")
        await app.flags.disable_where("*", "customer_id != 1")  # --all-jobs
        assert await app.enqueue(charge_customer, 100, 1, region="us") is None
        assert await app.enqueue(charge_customer, 99.5, 1, region="us") is not None
        assert await app.enqueue(charge_customer, 100, 1) is not None  # default region: eu
        assert await app.enqueue(charge_customer, 1, 8.0) is None  # 8.0 is 8
        assert await app.enqueue(charge_customer, 1, "7") is None  # the text of 7 too
        assert await app.enqueue(email_customer, 2) is None  # every class taking customer_id
        assert await app.enqueue(email_customer, 1) is not None
        assert await app.enqueue(rebuild_index, 2) is not None  # no customer_id: not matched
        texts = {(r.job, r.text) for r in await app.flags.rules()}
        assert texts == {
            ("charge_customer", "invoice_id>=100 and region='us'"),
            ("charge_customer", "customer_id in (7, 8)"),
            ("*", "customer_id!=1"),
        }
        assert await redis.zcard("arq:queue") == 4


async def test_bad_rules_and_ends_are_refused_whole_with_one_line_naming_the_part(
    settings: Settings, rule_env: dict[str, str]
) -> None:
    async with App(settings) as app:
        await app.migrate()
        refused = {
            "charge_customer has no argument 'customr_id'": app.flags.disable_where(
                charge_customer, "customer_id=42", customr_id=1
            ),
            "'region>eu': > compares numbers": app.flags.disable_where(
                charge_customer, "region>eu"
            ),
            "no registered job takes tenant": app.flags.disable_where("*", tenant=3),
            "until -5s: a timed stop must last longer than zero": app.flags.enable(
                "disable_rebuild_index", until=timedelta(seconds=-5)
            ),
            "UTC is not in the future": app.flags.disable_where(
                email_customer, customer_id=1, until=datetime(2020, 1, 1, tzinfo=UTC)
            ),
        }
        for said, call in refused.items():
            with pytest.raises(FlagRuleError, match=re.escape(said)):
                await call
    cases = {
        ("jobs", "disable", "charge_customer", "--where", "customer_id=42",
         "--where", "customr_id=1"):
            "charge_customer has no argument 'customr_id' (its arguments: invoice_id, "
            "customer_id, region); nothing was stored",
        ("jobs", "disable", "charge_customer", "--where", "customer_id =< 4"): "'customer_id =< 4' "
            "is not an argument rule",
        ("jobs", "disable", "charge_customer", "--for", "0s"): "--for 0s: a timed stop must last "
            "longer than zero",
        ("flags", "enable", "disable_x", "--until", "2020-01-01T00:00Z"): "--until "
            "2020-01-01T00:00Z: 2020-01-01 00:00:00 UTC is not in the future",
    }  # fmt: skip
    for args, said in cases.items():
        done = cli(*args, env=rule_env)
        assert done.returncode != 0, (args, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (args, done.stderr)
        assert said in lines[0], (args, done.stderr)
    async with App(settings) as app:  # nothing partial was stored, nothing audited
        assert (await app.flags.list(), await app.flags.rules()) == ([], [])
        assert await app.flags.history() == []


async def test_cli_adds_lists_and_removes_a_rule_of_several_conditions(
    rule_env: dict[str, str],
) -> None:
    assert cli("migrate", env=rule_env).returncode == 0
    added = cli(
        "jobs", "disable", "charge_customer", "--where", "customer_id in (42,43)",
        "--where", "region=us", "--reason", "fraud check", "--for", "1h", env=rule_env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "jobs with customer_id in (42, 43) and region='us' are stopped" in added.stdout
    listing = cli("jobs", "list", "--json", env=rule_env)
    jobs = {j["name"]: j for j in json.loads(listing.stdout)["jobs"]}
    (rule,) = jobs["charge_customer"]["rules"]
    assert (rule["rule"], rule["created_by"], rule["reason"]) == (
        "customer_id in (42, 43) and region='us'",
        "ops-oncall",
        "fraud check",
    )
    assert rule["until"] is not None
    assert jobs["email_customer"]["rules"] == []
    text = cli("jobs", "list", env=rule_env).stdout
    assert "RULES" in next(x for x in text.splitlines() if x.startswith("charge_customer"))
    status = json.loads(cli("status", "--json", env=rule_env).stdout)
    assert [(r["rule"], r["until"]) for r in status["rules"]] == [
        ("customer_id in (42, 43) and region='us'", rule["until"])
    ]
    missing = cli("jobs", "enable", "charge_customer", "--where", "customer_id=42", env=rule_env)
    assert missing.returncode == 1
    assert "has no rule customer_id=42 (its rules: customer_id in (42, 43)" in missing.stderr
    # The printed undo command, read as a POSIX shell reads a pasted line, removes it.
    undo = shlex.split(added.stdout.split("Undo: ", 1)[1].strip())
    assert undo[:4] == ["asyncjobs", "jobs", "enable", "charge_customer"]
    assert undo[4:] == ["--where", "customer_id in (42, 43)", "--where", "region='us'"]
    removed = cli(*undo[1:], env=rule_env)
    assert removed.returncode == 0, removed.stderr
    assert "is removed" in removed.stdout
    assert json.loads(cli("flags", "list", "--json", env=rule_env).stdout)["rules"] == []


async def test_timed_stops_end_by_themselves_once_recorded_as_done_by_the_schedule(
    settings: Settings, rule_env: dict[str, str], redis: aioredis.Redis
) -> None:
    async with App(settings) as app:
        await app.migrate()
        assert await app.enqueue(rebuild_index, 0) is not None
    with WorkerProcess(rule_env, cwd=ROOT) as worker:
        await recorded_runs(redis, 1)  # the worker has read its flags, and listens
        stop = cli("jobs", "disable", "rebuild_index", "--for", "3s", "-r", "reindex", env=rule_env)
        assert stop.returncode == 0, stop.stderr
        assert "until" in stop.stdout
        async with App(settings) as app:
            await app.flags.disable_where(
                email_customer, customer_id=42, until=timedelta(seconds=3), actor="ops-oncall"
            )
        # No one enables anything: the idle worker ends both at their time.
        ended = await wait_for_event(worker, "flag.changed", count=2, within=30, actor="schedule")
        assert {(e["flag"], e.get("rule"), e["new"]) for e in ended} == {
            ("disable_rebuild_index", None, False),
            ("disable_email_customer", "customer_id=42", False),
        }
    async with App(settings) as app:
        history = await app.flags.history()
        by_schedule = [(e.name, e.rule) for e in history if e.actor == "schedule"]
        assert sorted(by_schedule, key=str) == sorted(
            [("disable_rebuild_index", None), ("disable_email_customer", "customer_id=42")],
            key=str,
        )
        assert all(
            "set by ops-oncall" in (e.reason or "") for e in history if e.actor == "schedule"
        )
        assert await app.enqueue(rebuild_index, 1) is not None
        assert await app.enqueue(email_customer, 42) is not None
        assert await app.flags.rules() == []
        (flag,) = await app.flags.list()
        assert (flag.enabled, flag.updated_by, flag.expires_at) == (False, "schedule", None)


async def test_a_process_that_reads_after_the_end_sees_it_ended_and_records_it_once(
    settings: Settings,
) -> None:
    async with App(settings) as app, App(settings) as other:
        await app.migrate()
        await app.flags.enable("disable_rebuild_index", until=timedelta(seconds=1), actor="al")
        assert await other.enqueue(rebuild_index, 1) is None
        await eventually(
            lambda: other.enqueue(rebuild_index, 2), within=15, what="the stop ended by itself"
        )

        async def ended() -> list[FlagEvent]:
            return [e for e in await app.flags.history() if e.actor == "schedule"]

        events = await eventually(ended, within=15, what="the end recorded by the schedule")
        assert [(e.name, e.old_value, e.new_value) for e in events] == [
            ("disable_rebuild_index", True, False)
        ]


async def test_the_dashboard_shows_rules_and_timed_stops_on_the_jobs_and_flags_pages(
    settings: Settings,
) -> None:
    import httpx

    from asyncjobs.web import dashboard

    async with App(settings) as app:
        await app.migrate()
        await app.flags.disable_where(charge_customer, customer_id=42, reason="<b>dispute</b>")
        await app.flags.enable("disable_rebuild_index", until=timedelta(hours=1))
        transport = httpx.ASGITransport(app=dashboard(app))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as web:
            jobs = (await web.get("/jobs")).text
            job = (await web.get("/jobs/charge_customer")).text
            flags = (await web.get("/flags")).text
    assert "rule <code>customer_id=42</code>: rejected 0, skipped 0" in jobs
    assert "· until " in jobs  # rebuild_index's timed stop
    assert "<code>customer_id=42</code>" in job
    assert "&lt;b&gt;dispute&lt;/b&gt;" in flags  # escaped
    assert "Argument rules" in flags
    assert "rule <code>customer_id=42</code>" in flags  # in the audit trail
