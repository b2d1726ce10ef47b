"""The execution path's pure layers, in process and without a server: the retry decision
and the timeout (tests/integration/test_execution_layers.py has the layers that talk to one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.worker import Retry

from asyncjobs._execution import JobTimeout, SessionRequired, decide, timeout_layer
from asyncjobs._jobs import build_spec


async def _job(ctx: dict[str, Any], n: int = 0) -> int:
    return n


def _spec(**options: Any) -> Any:
    return build_spec(_job, name="layered_job", **options)


@pytest.mark.parametrize(
    ("error", "tries", "options", "retry", "why"),
    [
        (ValueError("x"), 1, {}, True, "retry_on"),
        (ValueError("x"), 25, {}, False, "max_tries"),
        (ValueError("x"), 2, {"max_tries": 2}, False, "max_tries"),
        (KeyError("x"), 1, {"retry_on": (ValueError,)}, False, "not_retry_on"),
        (PermissionError("x"), 1, {"give_up_on": PermissionError}, False, "give_up_on"),
        (Retry(defer=1), 1, {"give_up_on": Exception}, True, "asked"),
        (Retry(defer=1), 3, {"max_tries": 3}, False, "max_tries"),
        (SessionRequired("no session"), 1, {"exclusive": True}, False, "session_required"),
    ],
)
def test_decide_is_a_pure_function_of_error_tries_and_options(
    error: BaseException, tries: int, options: dict[str, Any], retry: bool, why: str
) -> None:
    decision = decide(error, tries, _spec(**options))
    assert (decision.retry, decision.why) == (retry, why)


async def test_the_timeout_layer_turns_running_too_long_into_a_job_timeout() -> None:
    async def slow(request: Any) -> None:
        await asyncio.Event().wait()  # runs until cancelled

    async def quick(request: Any) -> str:
        return "done"

    layer = timeout_layer(0.05)
    with pytest.raises(JobTimeout, match="longer than its timeout of 0.05s"):
        await layer(None, slow)  # type: ignore[arg-type]
    assert await layer(None, quick) == "done"  # type: ignore[arg-type]
