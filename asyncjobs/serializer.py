"""JSON payloads for arq, both ways. Never pickle.

Job payloads are strict JSON: an argument JSON cannot represent is an error at
enqueue time. Result payloads are lenient (an exception or an odd return value
is recorded as text), because by then the job has run and its outcome must be
stored, not lost to a serialization error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

# typeshed leaves out the C accelerator's names, which the json module does export.
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from ._exceptions import JobFailed


def compact_encoder(
    *, sort_keys: bool = False, allow_nan: bool = True, default: Callable[[Any], Any] | None = None
) -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":"), ...).encode``, a third cheaper per call.

    ``JSONEncoder.encode`` builds a new C encoder on every call; this one builds
    it once, with the arguments ``JSONEncoder.iterencode`` gives it (checked
    against the plain call when made), and again after an error, since the C
    encoder keeps its circular-reference markers when it fails. Where the C
    accelerator is missing it is the plain call.
    """
    reference = json.JSONEncoder(
        separators=(",", ":"), sort_keys=sort_keys, allow_nan=allow_nan, default=default
    )
    plain: Callable[[Any], str] = reference.encode

    def make() -> Callable[[Any, int], Any] | None:
        if c_make_encoder is None:
            return None
        made: Callable[[Any, int], Any] = c_make_encoder(
            {},
            reference.default,
            encode_basestring_ascii,
            None,
            ":",
            ",",
            sort_keys,
            False,
            allow_nan,
        )
        sample = [1, 2.5, "é\n", None, True, {"b": [{}], "a": -3}]
        return made if "".join(made(sample, 0)) == plain(sample) else None

    encoder = make()
    if encoder is None:
        return plain

    def encode(value: Any) -> str:
        nonlocal encoder
        if encoder is None:
            return plain(value)
        try:
            return "".join(encoder(value, 0))
        except BaseException:
            encoder = make()
            raise

    return encode


_encode_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _lenient_default(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    return repr(value)


_encode_lenient = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, default=_lenient_default
).encode


def serialize(data: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: job payloads strictly, results leniently."""
    if "s" in data:  # a result record: it has a success flag; job payloads do not
        return _encode_lenient(data).encode()
    return _encode_strict(data).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq's ``job_deserializer``: plain JSON.

    In a result record of a failed job, the stored exception (``{"error": class
    name, "message": ...}``) becomes an exception again, so arq's ``job.result()``
    raises it: :class:`~asyncjobs.JobFailed` carrying both, or
    ``asyncio.CancelledError`` for a cancelled (aborted) job, which is what arq's
    ``job.abort()`` waits for. Nothing is unpickled or imported.
    """
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"payload is a JSON {type(data).__name__}, not an object")
    if data.get("s") is False:
        data["r"] = _failure(data.get("r"))
    return data


def _failure(stored: Any) -> BaseException:
    if isinstance(stored, dict) and isinstance(stored.get("error"), str):
        error, message = stored["error"], str(stored.get("message", ""))
    else:  # arq's own text for a result it could not serialize, or anything else
        error, message = "JobFailed", str(stored)
    if error == "CancelledError":
        return asyncio.CancelledError(message)
    return JobFailed(error, message)
