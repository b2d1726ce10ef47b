"""`python -m benchmarks [CASE ...]`: run benchmarks against throwaway servers.

Prints a table and writes bench-results.json at the repository root (the
format: ``{"machine": {...}, "cases": [{"name", "value", "unit", "baseline",
"ratio", "target", "met", "runs", "notes"}, ...]}``). Benchmarks report; they never fail on a
missed target. BENCH_REPS (default 5) sets the repetitions.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from asyncjobs._services import EmbeddedServices, find_postgres_bin, find_redis_server
from benchmarks.cases import CASES

ROOT = Path(__file__).resolve().parent.parent


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    for token in out.replace("=", " ").split():
        if token[:1].isdigit():
            return token
    return out.strip() or "unknown"


def main(argv: list[str]) -> int:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; cases: {', '.join(CASES)}", file=sys.stderr)
        return 2
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": _version([find_redis_server(), "--version"]),
        "postgres": _version([str(find_postgres_bin() / "postgres"), "--version"]),
    }
    results: list[dict[str, Any]] = []
    with EmbeddedServices() as services:
        assert services.redis is not None
        assert services.postgres is not None
        urls = {"redis": services.redis.url, "postgres": services.postgres.url}
        for name in names:
            print(f"running {name} ...", flush=True)
            results.append(CASES[name](urls))
    (ROOT / "bench-results.json").write_text(
        json.dumps({"machine": machine, "cases": results}, indent=2) + "\n"
    )
    print()
    print(f"{'case':32} {'value':>12} {'unit':10} {'baseline':>10} {'ratio':>7}  target / met")
    for r in results:
        base = r.get("baseline") or {}
        baseline = f"{base['value']:,.1f}" if base else "-"
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        print(
            f"{r['name']:32} {r['value']:>12,} {r['unit']:<10} {baseline:>10} {ratio:>7}"
            f"  {r['target']} / {'met' if r['met'] else 'NOT MET'}"
        )
        print(f"{'':32} {r['notes']}")
    print(f"\nmachine: {machine}; figures in {ROOT / 'bench-results.json'}")
    return 0


if __name__ == "__main__":
    # A `kill` stops the run like Ctrl-C: the servers it started are stopped first.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
