"""Measuring for the scale cases: Redis's INFO counters, processes' and the machine's CPU.

Redis: ``used_cpu_sys + used_cpu_user`` (every thread of the server),
``total_commands_processed`` (which counts each command a Lua script runs as well as
the script call) and ``INFO commandstats`` per command. Processes: ``utime + stime``
from ``/proc/<pid>/stat``; the machine: ``/proc/stat``. Linux only.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CPUS = os.cpu_count() or 1
_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` used so far; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def _machine_busy() -> float:
    """Seconds of CPU the whole machine spent not idle, summed over its cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK  # guest time is counted in user already


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What Redis and the machine had counted at one moment."""

    at: float
    redis_cpu: float
    commands: int
    calls: dict[str, int]
    processes_cpu: float
    machine_busy: float
    own_cpu: float


async def snapshot(redis: Any, pids: Iterable[int]) -> Snapshot:
    """INFO's CPU and command counters, the CPU of ``pids``, the machine's, this process's."""
    info = await redis.execute_command("INFO", "cpu", "stats", "commandstats")
    calls = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in info.items()
        if key.startswith("cmdstat_")
    }
    return Snapshot(
        at=time.monotonic(),
        redis_cpu=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        commands=int(info["total_commands_processed"]),
        calls=calls,
        processes_cpu=sum(_process_cpu(pid) for pid in pids),
        machine_busy=_machine_busy(),
        own_cpu=time.process_time(),
    )


@dataclass(slots=True)
class Usage:
    """What one stretch of time cost: its wall seconds and everything counted in it."""

    seconds: float
    redis_cpu: float
    commands: float
    calls: dict[str, float]
    processes_cpu: float
    machine_busy: float
    own_cpu: float

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Usage:
        names = set(before.calls) | set(after.calls)
        return cls(
            seconds=after.at - before.at,
            redis_cpu=after.redis_cpu - before.redis_cpu,
            commands=after.commands - before.commands,
            calls={n: after.calls.get(n, 0) - before.calls.get(n, 0) for n in names},
            processes_cpu=after.processes_cpu - before.processes_cpu,
            machine_busy=after.machine_busy - before.machine_busy,
            own_cpu=after.own_cpu - before.own_cpu,
        )

    def less(self, other: Usage, share: float) -> None:
        """Take ``share`` of ``other``'s Redis CPU and commands away (idle traffic)."""
        self.redis_cpu -= other.redis_cpu * share
        self.commands -= other.commands * share
        for name, count in other.calls.items():
            self.calls[name] = self.calls.get(name, 0) - count * share


@dataclass(slots=True)
class Round:
    """One measured round: ``jobs`` jobs in ``usage``."""

    jobs: int
    usage: Usage

    @property
    def rate(self) -> float:
        return self.jobs / self.usage.seconds

    def figures(self) -> dict[str, float]:
        u, per_1000 = self.usage, 1000 / self.jobs
        return {
            "jobs_per_s": self.rate,
            "redis_cpu_ms_per_1000": u.redis_cpu * per_1000 * 1000,
            "commands_per_job": u.commands / self.jobs,
            "evalsha_per_job": max(0.0, u.calls.get("evalsha", 0) / self.jobs),
            "process_cpu_ms_per_1000": u.processes_cpu * per_1000 * 1000,
            "redis_cores": u.redis_cpu / u.seconds,
            "process_cores": u.processes_cpu / u.seconds,
            "machine_cores": u.machine_busy / u.seconds,
            "other_cores": max(
                0.0, (u.machine_busy - u.redis_cpu - u.processes_cpu - u.own_cpu) / u.seconds
            ),
        }


@dataclass(slots=True)
class Series:
    """Every round of one process count."""

    processes: int
    rounds: list[Round] = field(default_factory=list)

    def median(self) -> dict[str, float]:
        per_round = [r.figures() for r in self.rounds]
        return {key: statistics.median(f[key] for f in per_round) for key in per_round[0]}

    def commands_per_job(self, top: int = 12) -> dict[str, float]:
        """The most frequent commands, per job over every round (scripts' own included)."""
        jobs = sum(r.jobs for r in self.rounds)
        total: dict[str, float] = {}
        for r in self.rounds:
            for name, count in r.usage.calls.items():
                total[name] = total.get(name, 0) + count
        ranked = sorted(total.items(), key=lambda item: -item[1])[:top]
        return {name: round(count / jobs, 3) for name, count in ranked if count > 0}


def limit(figures: dict[str, float]) -> str:
    """What held a configuration back, from where its CPU went."""
    if figures["redis_cores"] >= 0.9:
        return "Redis (its one core busy)"
    if figures["machine_cores"] >= 0.9 * CPUS:
        return f"the machine's {CPUS} cores (all busy)"
    return "neither Redis nor the cores (waiting: latency, scheduling)"
