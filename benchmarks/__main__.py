"""`python -m benchmarks [CASE ...]`: run benchmarks against throwaway servers.

Prints a table and writes bench-results.json at the repository root (the
format is in shared/BENCHMARKS.md). Benchmarks report; they never fail on a
missed target. BENCH_REPS (default 5) sets the repetitions.
"""

from __future__ import annotations

import json
import os
import platform
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
    print(f"{'case':28} {'value':>14} {'baseline':>14} {'ratio':>7}  target / met")
    for r in results:
        base = r.get("baseline") or {}
        print(
            f"{r['name']:28} {r['value']:>10,.1f} {r['unit'].split('/')[0]:<3}"
            f" {base.get('value', float('nan')):>14,.1f} {r['ratio']:>6.2f}x"
            f"  {r['target']} / {'met' if r['met'] else 'NOT MET'}"
        )
        print(f"{'':28} {r['notes']}")
    print(f"\nmachine: {machine}; figures in {ROOT / 'bench-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
