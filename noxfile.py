"""Sessions: tests, lint, typecheck, bench, demo. Each starts its own servers where needed."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, against throwaway Redis and PostgreSQL it starts itself."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "asyncjobs", "tests", "benchmarks", "examples", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "asyncjobs", "tests", "benchmarks", "examples", "noxfile.py"
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the examples."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against bare arq, same run; prints a table, writes bench-results.json."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The provisioning service: servers, a worker and the web app, driven and narrated."""
    session.install("-e", ".[examples]")
    session.run("python", "-m", "examples.provisioning.demo", *session.posargs)
