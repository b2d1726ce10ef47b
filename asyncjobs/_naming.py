"""Names derived by convention: job names, flag names, stable lock keys."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from typing import Any

from .serializer import compact_encoder

_VALID_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,119}$")
_CAMEL_BOUNDARY_1 = re.compile(r"(.)([A-Z][a-z]+)")
_CAMEL_BOUNDARY_2 = re.compile(r"([a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    """``InvoiceJob`` → ``invoice_job``, ``HTTPRetryJob`` → ``http_retry_job``; snake stays."""
    s = _CAMEL_BOUNDARY_1.sub(r"\1_\2", name)
    s = _CAMEL_BOUNDARY_2.sub(r"\1_\2", s)
    return re.sub(r"_+", "_", s.replace("-", "_")).lower()


def is_valid_job_name(name: str) -> bool:
    """Lower-case letters, digits and underscores, starting with a letter, at most 120 long."""
    return bool(_VALID_JOB_NAME.match(name))


STOP_FLAG_PREFIX = "disable_"
"""A job's kill-switch flag is this prefix and the job's name."""


def job_of_flag(flag: str) -> str | None:
    """The job a kill-switch flag stops (``disable_invoice_job`` → ``invoice_job``), or
    ``None`` for a flag of another shape."""
    return flag[len(STOP_FLAG_PREFIX) :] if flag.startswith(STOP_FLAG_PREFIX) else None


def flag_name(job: Any) -> str:
    """The kill-switch flag for a job: ``invoice_job``, ``InvoiceJob`` → ``disable_invoice_job``.

    ``job`` is a job name, a decorated job (its registered name is used, even a
    custom one), or any function or class (the snake_case of its name).
    """
    spec = getattr(job, "__asyncjobs_job__", None)
    if spec is not None:
        return str(spec.flag)
    name = job if isinstance(job, str) else getattr(job, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"flag_name() takes a job, a job name or a class, not {job!r}")
    return STOP_FLAG_PREFIX + snake_case(name)


def _new_id_source() -> tuple[str, itertools.count[int]]:
    return os.urandom(8).hex(), itertools.count()


_id_prefix, _id_counter = _new_id_source()


def _reset_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = _new_id_source()


os.register_at_fork(after_in_child=_reset_ids_after_fork)


def new_job_id() -> str:
    """A job id: 32 hex characters, like arq's ``uuid4().hex``, unique across processes.

    64 random bits chosen once per process (and again in a forked child) and a
    64-bit counter: one system call per process instead of one per job, which
    is a quarter of the cost of a bulk enqueue where system calls are slow.
    """
    return f"{_id_prefix}{next(_id_counter):016x}"


_encode_sorted = compact_encoder(sort_keys=True, default=str)


def stable_digest(value: Any, size: int = 16) -> bytes:
    """BLAKE2b of ``value`` as sorted JSON: the same in every process and Python version.

    Values JSON cannot carry are hashed as ``str()``; Python's ``hash()`` is never used.
    """
    return hashlib.blake2b(_encode_sorted(value).encode(), digest_size=size).digest()
