"""Benchmark cases of tracing: the same work with ``tracing`` on and off, in the same run.

enqueue.single.sequential.tracing and worker.drain.noop.tracing. Tracing on is the
OpenTelemetry SDK's ``TracerProvider`` with every span sampled, recorded and handed to
a ``BatchSpanProcessor`` whose exporter discards the batches: the SDK's whole cost but
the network. The notes also give the ratio with one trace in ten sampled
(``ParentBased(TraceIdRatioBased(0.1))``, what a busy service sets) and with no provider
configured (the API's default: no-op spans, the trace context still read and checked).
Each side runs in a fresh child process (:mod:`benchmarks._traced`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.cases import REPS, _child, _ensure_migrated

TARGET = 0.85


def _result(name: str, on: list[float], off: list[float], notes: str) -> dict[str, Any]:
    value, baseline = statistics.median(on), statistics.median(off)
    ratio = value / baseline
    return {
        "name": name,
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": name.replace(".tracing", ".untraced"), "value": round(baseline, 1)},
        "ratio": round(ratio, 2),
        "target": f">= {TARGET}x tracing off",
        "met": ratio >= TARGET,
        "runs": [round(r, 1) for r in on],
        "baseline_runs": [round(r, 1) for r in off],
        "notes": notes,
    }


def enqueue_single_sequential_tracing(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.single.sequential.tracing: ``await enqueue(job, i)`` one after another with an
    App that traces (a PRODUCER span per enqueue, its context injected into the payload)
    against one that does not, 2,000 per run, alternating, in one process.

    Both have the kill switch on with a warm cache; they share nothing but the process.
    """
    _ensure_migrated(urls)
    data = _child("_traced", "enqueue", urls["redis"], urls["postgres"], str(REPS), "sdk")
    sampled = _child("_traced", "enqueue", urls["redis"], urls["postgres"], str(REPS), "sampled")
    api = _child("_traced", "enqueue", urls["redis"], urls["postgres"], str(REPS), "api")
    sampled_ratio = statistics.median(sampled["on"]) / statistics.median(sampled["off"])
    api_ratio = statistics.median(api["on"]) / statistics.median(api["off"])
    return _result(
        "enqueue.single.sequential.tracing",
        data["on"],
        data["off"],
        f"2000 enqueues per run, {REPS} runs, off and on alternating in chunks of 100; SDK "
        f"provider, batched exporter that discards; one trace in ten sampled: "
        f"{sampled_ratio:.2f}x; with the API's default (no SDK): {api_ratio:.2f}x",
    )


def worker_drain_noop_tracing(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.noop.tracing: one worker process drains 20,000 no-op jobs with tracing
    on (a CONSUMER span per job, its parent read from the payload's trace context) against
    the same worker with tracing off draining jobs without one; each run a fresh process,
    interleaved. The rest as worker.drain.noop.
    """
    _ensure_migrated(urls)
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    rates: dict[str, list[float]] = {"off": [], "sdk": [], "sampled": [], "api": []}
    for _ in range(REPS):
        for side in rates:
            data = _child("_traced", "drain", urls["redis"], urls["postgres"], str(jobs), side)
            if data["jobs"] != jobs:
                raise RuntimeError(f"tracing {side}: completed {data['jobs']} of {jobs} jobs")
            rates[side].append(jobs / data["seconds"])
    off = statistics.median(rates["off"])
    sampled_ratio = statistics.median(rates["sampled"]) / off
    api_ratio = statistics.median(rates["api"]) / off
    return _result(
        "worker.drain.noop.tracing",
        rates["sdk"],
        rates["off"],
        f"{jobs} jobs per run, {REPS} runs of each, interleaved, kill switch on; SDK provider, "
        f"batched exporter that discards; one trace in ten sampled: {sampled_ratio:.2f}x; "
        f"with the API's default (no SDK): {api_ratio:.2f}x",
    )


TRACING_CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "enqueue.single.sequential.tracing": enqueue_single_sequential_tracing,
    "worker.drain.noop.tracing": worker_drain_noop_tracing,
}
