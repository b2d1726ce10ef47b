"""Installs a server middleware that raises for one argument (used by a worker test)."""

from __future__ import annotations

from typing import Any

import asyncjobs


async def explode(request: asyncjobs.ExecutionRequest, call_next: Any) -> Any:
    if request.args and request.args[0] == "explode":
        raise RuntimeError("middleware refused 'explode'")
    return await call_next(request)


asyncjobs.get_app().server_middleware.append(explode)
