"""A throwaway PgBouncer in front of a PostgreSQL server, for tests of the pooled path.

Production deployments often reach PostgreSQL through PgBouncer in transaction
pooling (``pool_mode = transaction``): each transaction may run on a different
server process. :class:`EmbeddedPgBouncer` starts Debian's (or PATH's)
``pgbouncer`` on a free port, with a configuration of its own in a temporary
directory, in front of one PostgreSQL server: every database name is forwarded
(``* = host=... port=...``), authentication is ``trust`` with a user list naming
the server's user. Like the embedded PostgreSQL, it runs as an unprivileged user
when this process is root (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from ._exceptions import ConfigurationError
from ._services import _unprivileged_user, _wait_for_port, free_port


def find_pgbouncer() -> str | None:
    """Path of a ``pgbouncer`` binary (PATH, then Debian's ``/usr/sbin``), or ``None``."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


class EmbeddedPgBouncer:
    """PgBouncer on 127.0.0.1 and a free port, pooling connections to ``server_url``.

    ``pool_mode`` is PgBouncer's (``transaction`` by default, what production setups
    use); ``pool_size`` is its ``default_pool_size``: server connections per database
    and user. :meth:`url` gives the URL of a database through the pooler. A context
    manager; :meth:`stop` ends the process and removes its directory.
    """

    def __init__(
        self, server_url: str, *, pool_mode: str = "transaction", pool_size: int = 10
    ) -> None:
        parts = urlsplit(server_url)
        if parts.hostname is None or parts.port is None:
            raise ConfigurationError(f"EmbeddedPgBouncer needs a host and a port: {server_url}")
        self.server_url = server_url
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="asyncjobs-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        """``server_url`` pointed at this PgBouncer (``database`` replacing its path if given)."""
        parts = urlsplit(self.server_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        path = f"/{database}" if database is not None else parts.path
        return urlunsplit(parts._replace(netloc=netloc_new, path=path))

    def _write_config(self) -> Path:
        parts = urlsplit(self.server_url)
        user = parts.username or "postgres"
        password = parts.password or ""
        (self.directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={parts.hostname} port={parts.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            # asyncpg and psql send these at start-up; PgBouncer refuses unknown ones.
            "ignore_startup_parameters = extra_float_digits,search_path\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
        )
        return config

    def start(self) -> Self:
        """Start PgBouncer and wait until it listens; :class:`ConfigurationError` if the
        binary is missing."""
        binary = find_pgbouncer()
        if binary is None:
            raise ConfigurationError(
                "no pgbouncer binary found: install it (e.g. `apt-get install pgbouncer`)"
            )
        config = self._write_config()
        runner = _unprivileged_user()
        if runner is not None:
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, runner.pw_uid, runner.pw_gid)
        self.process = subprocess.Popen(
            [binary, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=runner.pw_uid if runner else None,
            group=runner.pw_gid if runner else None,
            start_new_session=True,
        )
        try:
            _wait_for_port(self.port, 10, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def log(self) -> str:
        """What PgBouncer logged so far (for a failing test's message)."""
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
