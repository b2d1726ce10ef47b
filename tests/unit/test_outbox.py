"""Transactional enqueue's checks without a server: a ``_connection`` that is not an asyncpg
connection fails before anything is written (tests/integration/test_outbox.py has the rest)."""

from __future__ import annotations

from typing import Any

import pytest

from asyncjobs import App, Args, InvalidOptionError
from asyncjobs._outbox import Backlog
from tests.helpers import Nowhere
from tests.workerjobs import record_args


@pytest.mark.parametrize(
    "call",
    [
        lambda app: app.enqueue(record_args, 1, _connection="postgresql://db/app"),
        lambda app: app.enqueue_many(record_args, [(1,)], _connection=object()),
        lambda app: app.enqueue_many(record_args, [Args(1, _connection=object())]),
    ],
)
async def test_a_connection_that_is_not_asyncpgs_is_refused_before_any_write(
    offline_app: App, nowhere: Nowhere, call: Any
) -> None:
    with pytest.raises(InvalidOptionError, match="_connection must be an asyncpg connection"):
        await call(offline_app)
    assert nowhere.dialled == 0


def test_the_backlog_reads_as_the_status_json_says() -> None:
    assert Backlog(3, 1.5).as_dict() == {"pending": 3, "oldest_age_s": 1.5}
    assert Backlog(0, None).as_dict() == {"pending": 0, "oldest_age_s": None}
