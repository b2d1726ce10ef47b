"""mypy --strict checks enqueue calls against the job's signature: a file of right and
wrong calls is type-checked, and exactly the wrong lines are errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from asyncjobs._enqueue import ENQUEUE_OPTIONS
from asyncjobs._typed import EnqueueOptions
from tests.conftest import ROOT

CALLS = """
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncjobs


@asyncjobs.job
async def send_welcome_email(ctx: Any, user_id: int, *, locale: str = "en") -> None: ...


@asyncjobs.job(queue="billing")
class InvoiceJob:
    async def perform(self, invoice_id: int) -> None: ...


@asyncjobs.job(every=timedelta(minutes=5))
async def tick(ctx: Any) -> None: ...


@asyncjobs.job(cron=asyncjobs.Cron(minute={0, 30}, weekday="mon"), max_tries=3)
async def digest(ctx: Any) -> None: ...


async def calls(app: asyncjobs.App) -> None:
    await send_welcome_email({}, 42)  # the decorated function is still itself
    await asyncjobs.enqueue(send_welcome_email, 42, locale="de")
    await app.enqueue(send_welcome_email, user_id=42)
    await asyncjobs.enqueue(InvoiceJob, 7)
    await asyncjobs.enqueue(tick)
    await asyncjobs.enqueue(digest, _job_id="digest-now")
    await asyncjobs.enqueue("send_welcome_email", "by name: not checked")
    await asyncjobs.enqueue(send_welcome_email, 42, _defer_by=60, _job_id="w-42")
    await app.enqueue(send_welcome_email, 42, locale="de", _defer_until=datetime.now(UTC))
    await asyncjobs.enqueue(InvoiceJob, 7, _queue_name="urgent", _expires=timedelta(hours=1))
    await asyncjobs.enqueue(send_welcome_email, 42, _jitter=30, _jitter_min=5, _job_try=2)
    await asyncjobs.enqueue(send_welcome_email, 42, _connection=None)
    await asyncjobs.enqueue_many(send_welcome_email, [(1,), (2,)], _jitter=timedelta(minutes=5))
    async for _ in app.enqueue_stream(InvoiceJob, range(3), batch_size=2, _defer_by=1.5):
        pass
    await asyncjobs.with_options(_defer_by=60).enqueue(send_welcome_email, 42, locale="de")
    await app.with_options(_job_id="i-7", _queue_name="urgent").enqueue(InvoiceJob, 7)
    await asyncjobs.enqueue(send_welcome_email, "42")  # E: a str for user_id: int
    await asyncjobs.enqueue(send_welcome_email)  # E: user_id missing
    await app.enqueue(send_welcome_email, 42, loc="de")  # E: no parameter loc
    await asyncjobs.enqueue(send_welcome_email, 42, "de")  # E: locale is keyword-only
    await asyncjobs.enqueue(InvoiceJob, "7")  # E: a str for invoice_id: int
    await asyncjobs.enqueue(tick, 1)  # E: a scheduled job takes no arguments
    await asyncjobs.enqueue(send_welcome_email, 42, _defer_by="soon")  # E: not seconds
    await asyncjobs.enqueue(send_welcome_email, 42, _defer=60)  # E: no option _defer
    await asyncjobs.enqueue_many(send_welcome_email, [(1,)], _defer=5)  # E: no option _defer
    await asyncjobs.enqueue_many(send_welcome_email, [(1,)], locale="de")  # E: not an option
    await asyncjobs.with_options(_defer_by=60).enqueue(send_welcome_email, "42")  # E: a str
    await app.with_options(_job_id="i-7").enqueue(InvoiceJob)  # E: invoice_id missing
    asyncjobs.with_options(_defer_by="soon")  # E: not seconds
"""


def test_mypy_reports_exactly_the_calls_that_do_not_fit_the_job(tmp_path: Path) -> None:
    source = tmp_path / "calls.py"
    source.write_text(textwrap.dedent(CALLS))
    wrong = {n for n, line in enumerate(CALLS.splitlines(), 1) if "# E:" in line}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--ignore-missing-imports",
            "--no-error-summary",
            "--hide-error-context",
            f"--cache-dir={ROOT / '.mypy_cache'}",
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # this tree's asyncjobs, not an installed one
        timeout=240,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    lines = {int(m.group(1)) for m in (re.search(r":(\d+): error", e) for e in errors) if m}
    assert lines == wrong, "\n".join([*errors, result.stderr])


def test_the_typed_options_are_enqueues_options() -> None:
    assert set(EnqueueOptions.__annotations__) == ENQUEUE_OPTIONS | {"_connection"}
