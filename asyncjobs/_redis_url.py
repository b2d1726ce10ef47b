"""Redis Sentinel's URL: ``redis+sentinel://`` read into the Sentinels, service and database.

Pure parsing, below both the settings (which check the URL when they are built)
and arq's boundary (:mod:`asyncjobs._arq`, which connects through the Sentinels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from ._exceptions import ConfigurationError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_URL_FORM = "redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>/<db>"
SENTINEL_PORT = 26379
"""A Sentinel's port when the URL names none (Redis Sentinel's own default)."""


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, read: the Sentinels to ask, the name they monitor the
    master under (the service), and the database, user and password for the master."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def hosts(self) -> str:
        """The Sentinels as ``host:port, host:port``, for messages."""
        return ", ".join(f"{host}:{port}" for host, port in self.sentinels)


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """``url`` read as :data:`SENTINEL_URL_FORM`, ``None`` if it is not a Sentinel URL;
    a malformed one is a :class:`ConfigurationError` naming ``ASYNCJOBS_REDIS_URL``.

    What was chosen: a Sentinel's port defaults to 26379 and the database to 0; the
    user and password are the master's and its replicas' (the Sentinels themselves are
    asked without a password); no query string (nothing is read from one, so nothing
    in one would be silently ignored); TLS is not supported through Sentinels.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME or not sep:
        return None
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    shown = url.replace(f"{userinfo}@", f"{user}:***@", 1) if colon else url

    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(
            f"ASYNCJOBS_REDIS_URL {why}: {shown!r}; expected {SENTINEL_URL_FORM}"
        )

    if "?" in rest or "#" in rest:
        raise bad("takes no query string")
    username = unquote(user) or None
    password = unquote(secret) if colon else None
    sentinels = tuple(_sentinel_address(part, bad) for part in hostlist.split(","))
    service, _, db = path.partition("/")
    if not service:
        raise bad("names no service (the name the Sentinels monitor the master under)")
    if "/" in db or (db and not db.isdigit()):
        raise bad(f"has {db!r} where the database number goes")
    return SentinelURL(sentinels, unquote(service), int(db or 0), username, password)


def _sentinel_address(part: str, bad: Callable[[str], ConfigurationError]) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    elif ":" in part:
        host, _, port = part.rpartition(":")
    else:
        host, port = part, ""
    if not host:
        raise bad("has an empty Sentinel address (host:port, separated by commas)")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise bad(f"has {port!r} where a Sentinel's port goes")
    return host, int(port or SENTINEL_PORT)
