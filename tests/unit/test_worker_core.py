"""The worker's own settings, read before it dials anything (no server here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from asyncjobs.testing import free_port
from tests.conftest import ROOT


def test_malformed_worker_variables_name_the_variable() -> None:
    # Nothing listens at this Redis URL: had the worker dialled it before reading its
    # settings, it would say so instead.
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    cases = {
        "ASYNCJOBS_QUEUES": ("a,,b", "ASYNCJOBS_QUEUES"),
        "ASYNCJOBS_HEARTBEAT": ("soon", "ASYNCJOBS_HEARTBEAT"),
        "ASYNCJOBS_SHUTDOWN_GRACE": ("-1", "ASYNCJOBS_SHUTDOWN_GRACE"),
    }
    for var, (value, named) in cases.items():
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")},
            "PYTHONPATH": str(ROOT),
            "ASYNCJOBS_REDIS_URL": redis_url,
            "ASYNCJOBS_IMPORTS": "tests.corejobs",
            "ASYNCJOBS_LOG_FORMAT": "json",
            var: value,
        }
        result = subprocess.run(
            [sys.executable, "-m", "arq", "asyncjobs.WorkerSettings"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
        assert [entry["event"] for entry in lines] == ["worker.misconfigured"], result.stderr
        assert named in lines[0]["error"]
