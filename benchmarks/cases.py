"""Benchmark cases. Each takes the servers' URLs and returns a result dict."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

REPS = int(os.environ.get("BENCH_REPS", "5"))


def _drain(kind: str, redis_url: str, jobs: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks._drain", kind, redis_url, str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if data["jobs"] != jobs:
        raise RuntimeError(f"{kind} completed {data['jobs']} of {jobs} jobs")
    data["rate"] = jobs / data["seconds"]
    return data


def worker_drain_noop(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.noop: one worker process drains a queue of 20,000 no-op jobs.

    Includes everything a worker does per job: arq's claim (WATCH/EXISTS/ZSCORE/
    MULTI), payload read and deserialization, the execution wrapper (server
    middleware chain, ``job.succeeded`` event written as JSON), and arq's finish
    pipeline. Excludes filling the queue (written beforehand with pipelines) and
    interpreter start-up. Baseline: arq's Worker with its defaults, in the same
    run, interleaved. Also reported: arq's Worker with asyncjobs' tuning and no
    wrapper, which separates the gain from tuning from the wrapper's cost.
    Each run is a fresh child process; the rate is jobs / seconds of ``run()``.
    """
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    ours: list[float] = []
    base: list[float] = []
    tuned: list[float] = []
    rss: list[int] = []
    for _ in range(REPS):
        run = _drain("asyncjobs", urls["redis"], jobs)
        ours.append(run["rate"])
        rss.append(run["max_rss_kb"])
        base.append(_drain("arq", urls["redis"], jobs)["rate"])
        tuned.append(_drain("arq-tuned", urls["redis"], jobs)["rate"])
    value, baseline = statistics.median(ours), statistics.median(base)
    ratio = value / baseline
    return {
        "name": "worker.drain.noop",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "arq.worker.defaults", "value": round(baseline, 1)},
        "ratio": round(ratio, 2),
        "target": ">= 2000 jobs/s and >= 8x baseline",
        "met": value >= 2000 and ratio >= 8,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in base],
        "notes": (
            f"{jobs} jobs per run, {REPS} runs; arq tuned without wrapper: median "
            f"{statistics.median(tuned):.0f} jobs/s (runs {[round(t) for t in tuned]}); "
            f"peak RSS {max(rss) // 1024} MiB"
        ),
    }


CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "worker.drain.noop": worker_drain_noop,
}
