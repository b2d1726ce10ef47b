"""Who is asking, and whether a form really comes from one of the dashboard's pages.

CSRF: a double-submit token. Each browser gets a random token in a cookie
(``HttpOnly``, ``SameSite=Strict``), signed with a key of this dashboard
instance; every form carries the same token in a hidden field. A POST is
refused (403) unless the field equals the cookie and the signature holds, so
another site can neither read the token nor plant one of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

CSRF_COOKIE = "asyncjobs_csrf"
CSRF_FIELD = "csrf"

Auth = Callable[[Request], "str | Awaitable[str | None] | None"]
"""``auth(request)``: the actor's name, or ``None`` to refuse the request (401)."""


class Tokens:
    """Signs and checks the CSRF tokens of one dashboard."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def new(self) -> str:
        """A fresh token: ``nonce.signature``."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was made by :meth:`new` of this instance."""
        if not token or token.count(".") != 1:
            return False
        nonce, signature = token.split(".")
        return hmac.compare_digest(signature, self._sign(nonce))

    def seal(self, notice: str) -> str:
        """The signature a redirect carries with ``notice``, so that only notices this
        dashboard issued are shown (anyone can put a ``?msg=`` in a link)."""
        return self._sign(f"notice:{notice}")

    def sealed(self, notice: str | None, seal: str | None) -> bool:
        """Whether ``seal`` is :meth:`seal` of ``notice`` by this instance."""
        return bool(notice and seal) and hmac.compare_digest(str(seal), self.seal(str(notice)))

    def matches(self, cookie: str | None, field: str | None) -> bool:
        """Whether a POST's form ``field`` and ``cookie`` hold the same valid token."""
        return (
            self.valid(cookie)
            and field is not None
            and hmac.compare_digest(field.encode(), (cookie or "").encode())
        )


async def actor_of(auth: Auth | None, request: Request) -> str | None:
    """The actor: ``auth(request)`` (awaited if it is a coroutine), or, without
    ``auth``, ``web@<client address>``."""
    if auth is None:
        client = request.client.host if request.client else "local"
        return f"web@{client}"
    found: Any = auth(request)
    if inspect.isawaitable(found):
        found = await found
    return None if found is None else str(found)
