from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs import flag_name, snake_case
from asyncjobs.naming import is_valid_job_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("InvoiceJob", "invoice_job"),
        ("invoice_job", "invoice_job"),
        ("HTTPRetryJob", "http_retry_job"),
        ("SendEmail2Job", "send_email2_job"),
        ("already_snake2", "already_snake2"),
    ],
)
def test_snake_case(name: str, expected: str) -> None:
    assert snake_case(name) == expected


def test_class_and_function_spellings_give_one_flag() -> None:
    assert flag_name("InvoiceJob") == flag_name("invoice_job") == "disable_invoice_job"


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,30}", fullmatch=True))
def test_snake_case_is_idempotent_and_yields_valid_names(name: str) -> None:
    once = snake_case(name)
    assert snake_case(once) == once
    if not name.endswith("_") and "__" not in name:
        assert is_valid_job_name(once) or once.endswith("_")
