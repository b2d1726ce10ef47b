"""Exclusive jobs without a server: lock keys and lock options."""

from __future__ import annotations

import pytest

import asyncjobs
from asyncjobs import JobDefinitionError
from asyncjobs._uniqueness import advisory_key


def test_advisory_keys_are_stable_signed_64_bit_integers() -> None:
    key = advisory_key("invoice:42")
    assert key == advisory_key("invoice:42")
    assert key != advisory_key("invoice:43")
    assert -(2**63) <= key < 2**63
    # pinned: a change would let two versions of asyncjobs hold "one" lock twice
    assert key == int.from_bytes(
        __import__("hashlib").blake2b(b'"invoice:42"', digest_size=8).digest(), "big", signed=True
    )


def test_bad_lock_options_are_refused() -> None:
    async def f(ctx: dict[str, object], x: int) -> None: ...

    for options, message in [
        ({"lock": "invoice"}, "must be a callable"),
        ({"exclusive": True, "on_locked": "wait"}, "'redefer' or 'drop'"),
        ({"exclusive": True, "lock_retry": 0}, "positive"),
    ]:
        with pytest.raises(JobDefinitionError, match=message):
            asyncjobs.job(registry=asyncjobs.Registry(), **options)(f)  # type: ignore[call-overload]
