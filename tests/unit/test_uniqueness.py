"""Uniqueness options, without a server."""

from __future__ import annotations

from typing import Any

import pytest

import asyncjobs
from asyncjobs import JobDefinitionError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_for": 60, "unique_until": "end"}, "'start' or 'success'"),
        ({"unique_key": lambda x: x}, "needs unique_for"),
        ({"unique_for": 0}, "positive"),
    ],
)
def test_bad_uniqueness_options_are_refused(options: dict[str, Any], message: str) -> None:
    async def f(ctx: dict[str, Any], x: int) -> None: ...

    with pytest.raises(JobDefinitionError, match=message):
        asyncjobs.job(registry=asyncjobs.Registry(), **options)(f)
