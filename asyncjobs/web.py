"""The operator's dashboard: queues, workers, jobs, dead letters, reconcilers and flags.

Needs the ``web`` extra (``pip install 'asyncjobs[web]'``: Starlette, Jinja2,
uvicorn); importing this module without it raises ``ImportError`` naming the
extra. Mount it in any Starlette or FastAPI app::

    web_app.mount("/jobs", asyncjobs.web.dashboard(auth=current_operator))

or serve it alone with ``asyncjobs web`` (on 127.0.0.1 only). The README's
"Dashboard" section lists the pages and the security rules.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401 -- checked here so the error names the extra
    import starlette  # noqa: F401
except ImportError as exc:  # the one clear error the core package's users get
    raise ImportError(
        "asyncjobs' dashboard needs starlette and jinja2, which are not installed: "
        "pip install 'asyncjobs[web]'"
    ) from exc

from typing import TYPE_CHECKING

from ._web import dashboard as _dashboard
from ._web.security import Auth

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ._app import App

__all__ = ["Auth", "dashboard"]


def dashboard(
    app: App | None = None, *, auth: Auth | None = None, read_only: bool = False
) -> Starlette:
    """The dashboard as an ASGI app (Starlette) over ``app`` (default: the default App).

    ``auth(request)`` (plain or async) returns the operator's name, recorded with
    every action (the flags' audit trail, ``dashboard.action`` log events), or
    ``None`` to refuse the request with a 401. Without ``auth`` anyone who reaches
    the app may act, named ``web@<client address>``: serve it on a loopback
    address only. ``read_only=True`` shows no buttons and refuses every POST (403).

    Every action is a POST carrying a CSRF token; a POST without it gets a 403.
    A Redis or PostgreSQL that cannot be reached is named in a banner on the page;
    an unknown job, queue, dead letter or flag in the URL is a 404 page, and a
    malformed page number or filter a 400.
    """
    return _dashboard(app, auth=auth, read_only=read_only)
