from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs import flag_name, snake_case
from asyncjobs._naming import is_valid_job_name


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


def test_job_ids_look_like_arqs_and_do_not_repeat_even_across_a_fork() -> None:
    import os

    from asyncjobs._naming import new_job_id

    ids = {new_job_id() for _ in range(100_000)}
    assert len(ids) == 100_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in list(ids)[:100])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, new_job_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id[:16] != new_job_id()[:16]  # a fresh random prefix in the child
