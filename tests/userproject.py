"""A new user's project, and the installed ``asyncjobs`` command run from inside it.

Run from the project directory with ``PYTHONPATH`` unset, never ``python -m``: the
command must find the user's module (``myapp.jobs``) the way it would for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMMAND = str(Path(sys.executable).parent / "asyncjobs")  # the console script, as installed
ARQ = str(Path(sys.executable).parent / "arq")

USER_MODULE = """
import asyncjobs

@asyncjobs.job
async def send_welcome_email(ctx, user_id: int) -> None:
    await ctx["redis"].rpush("welcomed", user_id)

@asyncjobs.job(max_tries=1)
async def always_fails(ctx, n: int) -> None:
    raise ValueError(f"bad {n}")
"""


def make_project(directory: Path) -> Path:
    """``directory`` holding ``myapp/jobs.py``, nothing else."""
    (directory / "myapp").mkdir()
    (directory / "myapp" / "__init__.py").write_text("")
    (directory / "myapp" / "jobs.py").write_text(USER_MODULE)
    return directory


def user_env(**extra: str) -> dict[str, str]:
    """This environment without ASYNCJOBS_* and PYTHONPATH, importing ``myapp.jobs``."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_") and k != "PYTHONPATH"
    }
    return {**base, "ASYNCJOBS_IMPORTS": "myapp.jobs", **extra}


def run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``asyncjobs ARGS`` in ``project``, with ``env`` added; never a terminal."""
    return subprocess.run(
        [COMMAND, *args],
        cwd=project,
        env=user_env(**env),
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
