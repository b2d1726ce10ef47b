"""Cancelling, without a server: a Redis that is down is one clear error."""

from __future__ import annotations

import pytest

from asyncjobs import App, CancelError, Settings
from asyncjobs.testing import free_port


async def test_cancel_while_redis_is_down_says_so() -> None:
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    async with App(dead) as app:
        with pytest.raises(CancelError, match="Redis is unreachable.*was not cancelled"):
            await app.cancel("abc")
