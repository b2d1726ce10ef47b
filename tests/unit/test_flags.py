"""Flag names, without a server: they follow the job's name, and a bad one never
reaches SQL (tests/integration/test_flags.py has the store, the cache and the gates)."""

from __future__ import annotations

import pytest

from asyncjobs import App, FlagNameError, Settings, flag_name
from tests.helpers import Nowhere
from tests.workerjobs import InvoiceJob, record_args


def test_flag_names_follow_the_job_name() -> None:
    assert flag_name(InvoiceJob) == flag_name("invoice_job") == "disable_invoice_job"
    assert flag_name("InvoiceJob") == "disable_invoice_job"
    assert flag_name(record_args) == "disable_record_args"


@pytest.mark.parametrize("bad", ["", "Disable_X", "disable-x", "x; DROP TABLE flags", "9lives"])
async def test_bad_flag_names_are_a_clear_error_never_sql(nowhere: Nowhere, bad: str) -> None:
    settings = Settings(redis_url=nowhere.redis_url, database_url=nowhere.database_url)
    async with App(settings) as app:
        with pytest.raises(FlagNameError, match="not a valid flag name"):
            await app.flags.enable(bad)
    assert nowhere.dialled == 0  # PostgreSQL was not even dialled: no SQL, nothing stored
