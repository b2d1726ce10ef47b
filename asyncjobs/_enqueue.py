"""Enqueue: option checking, the client-middleware chain's innermost step, the Redis write.

The write keeps arq's job format exactly (``arq:job:<id>`` holding the JSON
payload with arq's TTL rule, and the id in the queue's sorted set scored by
the time it may run), so arq's unmodified worker runs what asyncjobs enqueues.
A ``_job_id`` is refused while a job or a result with that id exists, as in
arq: ``enqueue()`` then returns ``None``.

Unlike arq's ``enqueue_job`` (WATCH, EXISTS, MULTI/EXEC: three round trips),
the check and the write are one Lua script called by its SHA (loaded again on
NOSCRIPT), so a job costs one round trip and a batch of jobs costs one too.

Jitter: ``_jitter=W`` (seconds or timedelta) adds a delay drawn uniformly from
``[_jitter_min, W)`` (``_jitter_min`` defaults to 0) on top of any
``_defer_by``/``_defer_until``; each job of an ``enqueue_many`` call draws its
own, so a batch spreads evenly over the window.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import random
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from . import _logs as logs
from ._arq import (
    EXPIRES_EXTRA_MS,
    JOB_PREFIX,
    REDIS_UNAVAILABLE,
    RESULT_PREFIX,
    ArqRedis,
    AsyncScript,
    Job,
    NoScriptError,
    RawCommand,
    ResponseError,
    bulk_string,
    timestamp_ms,
    to_unix_ms,
)
from ._claim import WAKE_LUA
from ._core import Core, EnqueueRequest
from ._exceptions import (
    ConfigurationError,
    EnqueueError,
    EnqueueOutcomeUnknownError,
    InvalidOptionError,
    JobArgumentsError,
    JobSerializationError,
    RedisUnavailableError,
    UnknownOptionError,
)
from ._jobs import seconds
from ._naming import new_job_id
from ._settings import check_queue_name
from ._uniqueness import unique_key
from .serializer import compact_encoder, deserialize

if TYPE_CHECKING:
    from ._jobs import JobSpec

ENQUEUE_OPTIONS = frozenset(
    {
        "_job_id",
        "_queue_name",
        "_defer_until",
        "_defer_by",
        "_expires",
        "_job_try",
        "_jitter",
        "_jitter_min",
        "_connection",
    }
)
"""The keyword options ``enqueue()`` takes: arq's ``enqueue_job`` options, jitter, and
``_connection`` (a transactional enqueue, :mod:`asyncjobs._outbox`)."""


_log = structlog.get_logger("asyncjobs.enqueue")
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def split_options(
    spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any], *, bind: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the job's keyword arguments from enqueue's ``_options`` and check both.

    Raises :class:`UnknownOptionError` for an ``_option`` enqueue does not know,
    :class:`InvalidOptionError` for a bad value and :class:`JobArgumentsError`
    when the arguments do not fit the job's signature (unless ``bind=False``).
    """
    options: dict[str, Any] = {}
    job_kwargs = kwargs
    if kwargs:
        job_kwargs = {}
        for key, value in kwargs.items():
            if key[:1] != "_":
                job_kwargs[key] = value
            elif key in ENQUEUE_OPTIONS:
                if value is not None:
                    options[key] = value
            else:
                raise UnknownOptionError(_unknown_option_message(spec.name, key))
        if options:
            _check_options(spec.name, options)
    if not bind:
        return job_kwargs, options
    try:
        spec.bind(args, job_kwargs)
    except TypeError as exc:
        raise JobArgumentsError(
            f"arguments do not fit job {spec.name!r}{spec.signature}: {exc}"
        ) from None
    return job_kwargs, options


def _unknown_option_message(job_name: str, key: str) -> str:
    close = difflib.get_close_matches(key, ENQUEUE_OPTIONS, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, sorted(close)))}?" if close else ""
    return (
        f"enqueue({job_name!r}) got unknown option {key!r}.{hint} "
        f"Options are {', '.join(sorted(ENQUEUE_OPTIONS))}; job parameters may not start with '_'."
    )


MAX_JOB_ID_LENGTH = 1024
MAX_JOB_TRY = 1_000_000


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    # Options are checked before the client middleware runs (so a wrong call fails
    # before any middleware sees it) and read again by prepare(), after it: middleware
    # may change them. Both go through this one parser.
    return seconds(value, name, allow_zero=allow_zero, error=InvalidOptionError)


def _check_text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{key} must be a non-empty string, not {value!r}")
    if len(value) > MAX_JOB_ID_LENGTH:
        raise InvalidOptionError(f"{key} must be at most {MAX_JOB_ID_LENGTH} characters")
    if key == "_queue_name":
        try:
            check_queue_name(value, "_queue_name")
        except ConfigurationError as exc:
            raise InvalidOptionError(str(exc)) from None


def _check_options(job_name: str, options: dict[str, Any]) -> None:  # noqa: C901 -- one check per option, in the order a reader looks for them
    if len(options) == 1 and "_job_id" in options:  # reconcilers: a stable id per job
        _check_text("_job_id", options["_job_id"])
        return
    if "_defer_by" in options and "_defer_until" in options:
        raise InvalidOptionError(f"enqueue({job_name!r}): use _defer_by or _defer_until, not both")
    if "_defer_by" in options:
        _seconds("_defer_by", options["_defer_by"], allow_zero=True)
    if "_expires" in options:
        _seconds("_expires", options["_expires"], allow_zero=False)
    if "_defer_until" in options:
        until = options["_defer_until"]
        if not isinstance(until, datetime):
            raise InvalidOptionError(f"_defer_until must be a datetime, not {until!r}")
        if until.year > datetime.now().year + 10:
            raise InvalidOptionError("_defer_until must be within ten years")
    for key in ("_job_id", "_queue_name"):
        if key in options:
            _check_text(key, options[key])
    if "_jitter" in options:
        high = _seconds("_jitter", options["_jitter"], allow_zero=False)
        low = _seconds("_jitter_min", options.get("_jitter_min", 0), allow_zero=True)
        if low >= high:
            raise InvalidOptionError(f"_jitter_min ({low}s) must be less than _jitter ({high}s)")
    elif "_jitter_min" in options:
        raise InvalidOptionError("_jitter_min needs _jitter: the window is [_jitter_min, _jitter)")
    if "_connection" in options:
        _check_connection(options["_connection"])
    job_try = options.get("_job_try")
    if job_try is not None and (
        not isinstance(job_try, int) or isinstance(job_try, bool) or not 1 <= job_try <= MAX_JOB_TRY
    ):
        raise InvalidOptionError(
            f"_job_try must be a whole number from 1 to {MAX_JOB_TRY:,}, not {job_try!r}"
        )


def _check_connection(conn: Any) -> None:
    if not isinstance(conn, asyncpg.Connection | PoolConnectionProxy):
        raise InvalidOptionError(
            f"_connection must be an asyncpg connection (asyncpg.connect() or pool.acquire()), "
            f"not {type(conn).__name__}"
        )
    if not conn.is_in_transaction():
        raise InvalidOptionError(
            "_connection is not in a transaction: the outbox row would be committed at once, "
            "whatever your code does next. Enqueue inside `async with conn.transaction():`, "
            "or leave _connection out to enqueue straight to Redis"
        )


_encode_value = compact_encoder(allow_nan=False)


_name_json: dict[str, str] = {}

TRACE_CONTEXT_KEY = "trace"
"""The payload key of a traced enqueue's trace context (see :mod:`asyncjobs._tracing`):
asyncjobs' own, next to arq's ``t f a k et``, which are all arq's deserializer reads."""


def serialize_job(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    job_try: int | None,
    now_ms: int,
    trace_context: dict[str, str] | None = None,
) -> bytes:
    """arq's job payload as JSON, or :class:`JobSerializationError` naming the bad argument.

    The bytes are those of ``{"t":…,"f":…,"a":…,"k":…,"et":…}`` encoded whole
    (compact, ASCII); only the arguments go through the encoder. A ``trace_context``
    is added last, under :data:`TRACE_CONTEXT_KEY`.
    """
    try:
        encoded_args = _encode_value(args)
        encoded_kwargs = _encode_value(kwargs) if kwargs else "{}"
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobSerializationError(_serialization_message(name, args, kwargs, exc)) from exc
    quoted = _name_json.get(name)
    if quoted is None:
        quoted = _name_json[name] = _encode(name)
    job_try_json = "null" if job_try is None else str(int(job_try))
    if trace_context is not None:
        traced = f',"{TRACE_CONTEXT_KEY}":{_encode_value(trace_context)}}}'
        return (
            f'{{"t":{job_try_json},"f":{quoted},"a":{encoded_args},"k":{encoded_kwargs},'
            f'"et":{now_ms}{traced}'
        ).encode()
    return (
        f'{{"t":{job_try_json},"f":{quoted},"a":{encoded_args},"k":{encoded_kwargs},"et":{now_ms}}}'
    ).encode()


def _serialization_message(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> str:
    where = "an argument"
    labelled = [(f"argument {i + 1}", v) for i, v in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            _encode(value)
        except RecursionError:
            where = f"{label} ({type(value).__name__}, nested too deeply)"
            break
        except (TypeError, ValueError):
            where = f"{label} ({type(value).__name__})"
            break
    return (
        f"cannot enqueue {name!r}: {where} cannot be written as JSON ({exc}). Pass str, int, "
        "float, bool, None, list or dict, e.g. an id instead of an object, "
        "datetime.isoformat() instead of a datetime."
    )


def queue_type_check(stride: int) -> str:
    """Lua: fail before any write if a job's queue key holds something other than a
    sorted set (a later ZADD would fail after its job key was written)."""
    return f"""
for i = 3, #KEYS, {stride} do
  if KEYS[i] ~= KEYS[i - {stride}] then
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'zset' and t ~= 'none' then
      return redis.error_reply(
        'WRONGTYPE the queue ' .. KEYS[i] .. ' is a ' .. t .. ', not a sorted set')
    end
  end
end
"""


WAKE_QUEUES_LUA = (
    WAKE_LUA
    + """
-- Wake an idle worker of each queue written to (see asyncjobs._claim).
for queue in pairs(woken) do wake(queue) end
"""
)

ENQUEUE_LUA = (
    """
-- KEYS: per job, its job key, result key and queue. ARGV: per job, the expiry
-- (ms), score, payload and id. A job is written whole (key and queue entry) or,
-- while a job or result with its id exists (arq's rule), not at all. Per job the
-- reply is 1 (written) or 0 (duplicate id). A queue key that is not a sorted
-- set fails the call before anything is written.
"""
    + queue_type_check(3)
    + """local out, woken = {}, {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, i * 4
  if redis.call('EXISTS', KEYS[k + 1], KEYS[k + 2]) == 0 then
    redis.call('PSETEX', KEYS[k + 1], ARGV[a + 1], ARGV[a + 3])
    redis.call('ZADD', KEYS[k + 3], ARGV[a + 2], ARGV[a + 4])
    woken[KEYS[k + 3]] = true
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
"""
    + WAKE_QUEUES_LUA
    + """return out
"""
)

ENQUEUE_UNIQUE_LUA = (
    """
-- As ENQUEUE_LUA, with a fourth key per job, its uniqueness lock, and a fifth
-- argument, the lock's TTL in ms: a job whose lock is held is not written and
-- its reply is 2. The lock is taken in the same call as the write.
"""
    + queue_type_check(4)
    + """local out, woken = {}, {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, i * 5
  if redis.call('EXISTS', KEYS[k + 1], KEYS[k + 2]) ~= 0 then
    out[i + 1] = 0
  elseif not redis.call('SET', KEYS[k + 4], ARGV[a + 4], 'NX', 'PX', ARGV[a + 5]) then
    out[i + 1] = 2
  else
    redis.call('PSETEX', KEYS[k + 1], ARGV[a + 1], ARGV[a + 3])
    redis.call('ZADD', KEYS[k + 3], ARGV[a + 2], ARGV[a + 4])
    woken[KEYS[k + 3]] = true
    out[i + 1] = 1
  end
end
"""
    + WAKE_QUEUES_LUA
    + """return out
"""
)

WRITTEN, DUPLICATE_ID, NOT_UNIQUE = 1, 0, 2


class Prepared(NamedTuple):
    """One job ready to write: everything the Lua script needs."""

    job_id: str
    queue: str
    score: int
    expires_ms: int
    payload: bytes
    unique_key: str | None
    unique_ms: int


def prepare(request: EnqueueRequest) -> Prepared:
    """Turn a request into the id, queue, score, TTL and JSON payload of its job."""
    options = request.options
    name = request.spec.name
    queue = options.get("_queue_name") or request.spec.queue or request.app.settings.queue_name
    job_id = options.get("_job_id") or new_job_id()
    now_ms = timestamp_ms()
    if not options:
        score = now_ms
    else:
        defer_until = options.get("_defer_until")
        if defer_until is not None:
            score = to_unix_ms(defer_until)
        elif "_defer_by" in options:
            score = now_ms + round(
                _seconds("_defer_by", options["_defer_by"], allow_zero=True) * 1000
            )
        else:
            score = now_ms
        if "_jitter" in options:
            score += round(_jitter_seconds(options) * 1000)
    if "_expires" in options:
        expires_ms = round(_seconds("_expires", options["_expires"], allow_zero=False) * 1000)
    else:
        expires_ms = score - now_ms + EXPIRES_EXTRA_MS
    if expires_ms <= 0:
        raise InvalidOptionError(
            f"enqueue({name!r}): _defer_until is more than a day in the past, so the job "
            "would expire before it could run; pass a later time or an explicit _expires"
        )
    payload = serialize_job(
        name, request.args, request.kwargs, options.get("_job_try"), now_ms, request.trace_context
    )
    spec = request.spec
    if spec.unique_for is None:
        return Prepared(job_id, queue, score, expires_ms, payload, None, 0)
    lock = unique_key(spec, request.args, request.kwargs)
    return Prepared(job_id, queue, score, expires_ms, payload, lock, round(spec.unique_for * 1000))


def _jitter_seconds(options: dict[str, Any]) -> float:
    high = _seconds("_jitter", options["_jitter"], allow_zero=False)
    low = _seconds("_jitter_min", options.get("_jitter_min", 0), allow_zero=True)
    return random.uniform(low, high)


_JOB_KEYS = b"$%d\r\n" + JOB_PREFIX.encode() + b"%b\r\n$%d\r\n" + RESULT_PREFIX.encode() + b"%b\r\n"
_JOB_KEYS_EXTRA = (len(JOB_PREFIX.encode()), len(RESULT_PREFIX.encode()))
_JOB_ARGS = b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_queue_resp: dict[str, bytes] = {}


def pack_enqueue(sha: str, jobs: list[Prepared]) -> bytes:
    """The EVALSHA command writing ``jobs``, in Redis's wire format (RESP).

    Packed here rather than by redis-py, whose general-purpose packing of the
    seven arguments a job takes was the largest cost of a bulk enqueue.
    """
    unique = jobs[0].unique_key is not None
    keys: list[bytes] = []
    argv: list[bytes] = []
    job_extra, result_extra = _JOB_KEYS_EXTRA
    for job in jobs:
        job_id = job.job_id.encode()
        size = len(job_id)
        queue = _queue_resp.get(job.queue)
        if queue is None:
            if len(_queue_resp) >= 1000:  # queue names made per tenant, say: stay bounded
                _queue_resp.clear()
            queue = _queue_resp[job.queue] = bulk_string(job.queue.encode())
        expires = b"%d" % job.expires_ms
        score = b"%d" % job.score
        payload = job.payload
        keys.append(_JOB_KEYS % (size + job_extra, job_id, size + result_extra, job_id))
        keys.append(queue)
        argv.append(
            _JOB_ARGS
            % (len(expires), expires, len(score), score, len(payload), payload, size, job_id)
        )
        if unique:
            keys.append(bulk_string((job.unique_key or "").encode()))
            argv.append(bulk_string(b"%d" % job.unique_ms))
    per_job_keys, per_job_args = (4, 5) if unique else (3, 4)
    key_count = b"%d" % (per_job_keys * len(jobs))
    head = b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (
        3 + (per_job_keys + per_job_args) * len(jobs),
        bulk_string(sha.encode()),
        bulk_string(key_count),
    )
    return b"".join((head, *keys, *argv))


class Diversion(Protocol):
    """Where written jobs go instead of Redis while it is in force (:data:`DIVERSIONS`).

    :func:`asyncjobs.testing.capture` is one: everything above the write (options,
    payload, the client chain with the kill switch, bulk batching) runs as in
    production, and only the EVALSHA is replaced.
    """

    async def write(self, app: Core, jobs: list[Prepared]) -> list[int]:
        """Per job WRITTEN, DUPLICATE_ID or NOT_UNIQUE, as the enqueue script answers."""
        ...

    def job(self, app: Core, job: Prepared) -> Job:
        """What ``enqueue()`` returns for a job :meth:`write` answered WRITTEN."""
        ...


DIVERSIONS: list[Diversion] = []
"""The diversions in force, the innermost last; while there is one, every write of
this process goes to it and nothing is written to Redis. Only for tests."""


class SentWrite:
    """An enqueue's EVALSHA, sent; :meth:`read` its reply once, or :meth:`discard` it.

    Sending and reading are separate so that a bulk enqueue prepares its next
    batch while Redis runs this one. :meth:`job` is what ``enqueue()`` returns for a
    job of it that was written.
    """

    __slots__ = ("app", "job_ids", "raw", "redis", "script", "what")

    def __init__(
        self,
        app: Core,
        raw: RawCommand,
        script: AsyncScript,
        what: str,
        job_ids: tuple[str, ...],
        redis: ArqRedis,
    ) -> None:
        self.app, self.raw, self.script, self.what = app, raw, script, what
        self.job_ids = job_ids
        self.redis = redis

    def job(self, job: Prepared) -> Job:
        """arq's Job for ``job``, one of this write's that was written."""
        return Job(job.job_id, redis=self.redis, _queue_name=job.queue, _deserializer=deserialize)

    async def read(self) -> list[int]:
        """Per job WRITTEN, DUPLICATE_ID or NOT_UNIQUE; waits at most ``redis_timeout``.

        Loads the script and sends the command again if Redis answers NOSCRIPT. Once the
        command was sent, no answer in time is :class:`EnqueueOutcomeUnknownError`: the
        jobs may be in Redis.
        """
        raw = self.raw
        try:
            async with asyncio.timeout(self.app.settings.redis_timeout):
                try:
                    try:
                        codes: list[int] = await raw.reply()
                        return codes
                    except NoScriptError:
                        pass
                    await raw.redis.script_load(self.script.script)
                    await raw.resend()
                    codes = await raw.reply()
                    return codes
                finally:
                    await raw.release()
        except REDIS_UNAVAILABLE as exc:
            raise self._unknown(exc) from exc
        except ResponseError as exc:  # the script checks first, so nothing was written
            raise EnqueueError(f"Redis refused the write ({exc}); {self.what} enqueued") from exc

    def _unknown(self, exc: BaseException) -> EnqueueOutcomeUnknownError:
        ids = self.job_ids
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        return EnqueueOutcomeUnknownError(
            f"Redis did not answer within {self.app.settings.redis_timeout}s after the write "
            f"was sent ({type(exc).__name__}: {exc or 'timed out'}): job id(s) {shown} may or "
            "may not be enqueued. Enqueue again with the same _job_id (a duplicate is refused) "
            "to be sure.",
            job_ids=ids,
        )

    async def discard(self) -> None:
        """Give the connection back without reading the reply."""
        await self.raw.discard()


class _Diverted(SentWrite):
    """A write a :class:`Diversion` took: its reply is known at once; nothing was sent."""

    __slots__ = ("codes", "diversion")

    def __init__(self, app: Core, diversion: Diversion, codes: list[int]) -> None:
        self.app, self.diversion, self.codes = app, diversion, codes

    async def read(self) -> list[int]:
        return self.codes

    async def discard(self) -> None:
        pass

    def job(self, job: Prepared) -> Job:
        return self.diversion.job(self.app, job)


async def send_prepared(app: Core, jobs: list[Prepared], what: str) -> SentWrite:
    """Send the write of ``jobs`` (one EVALSHA); read the reply with :meth:`SentWrite.read`.

    A batch holds one job's calls, so either all are unique or none is. An
    unreachable Redis raises :class:`RedisUnavailableError` within
    ``settings.redis_timeout``, saying that ``what`` enqueued.
    """
    if DIVERSIONS:
        diversion = DIVERSIONS[-1]
        return _Diverted(app, diversion, await diversion.write(app, jobs))
    script = await app.script(ENQUEUE_UNIQUE_LUA if jobs[0].unique_key is not None else ENQUEUE_LUA)
    command = pack_enqueue(script.sha, jobs)
    redis = await app.redis()
    try:
        async with asyncio.timeout(app.settings.redis_timeout):
            raw = await RawCommand.send(redis, command)
    except REDIS_UNAVAILABLE as exc:
        raise _unavailable(app, what, exc) from exc
    return SentWrite(app, raw, script, what, tuple(job.job_id for job in jobs), redis)


def _unavailable(app: Core, what: str, exc: BaseException) -> RedisUnavailableError:
    return RedisUnavailableError(
        f"Redis is unreachable ({type(exc).__name__}: {exc or 'timed out'} after at most "
        f"{app.settings.redis_timeout}s); {what} enqueued. "
        "Check ASYNCJOBS_REDIS_URL and that Redis is running."
    )


async def write_prepared(app: Core, jobs: list[Prepared], what: str) -> list[int]:
    """Write ``jobs`` in one round trip and wait for the reply (see :func:`send_prepared`)."""
    return await (await send_prepared(app, jobs, what)).read()


async def write_job(request: EnqueueRequest) -> Job | None:
    """The innermost step of the client chain: write the job to Redis in one round trip."""
    job = prepare(request)
    app = request.app
    name = request.spec.name
    sent = await send_prepared(app, [job], f"job {name!r} was not")
    (code,) = await sent.read()
    if code != WRITTEN:
        reason = "unique" if code == NOT_UNIQUE else "duplicate_id"
        app.instruments.job(name).rejected(reason)
        _log.info(logs.JOB_REJECTED, job=name, job_id=job.job_id, reason=reason)
        return None
    app.instruments.job(name).enqueued(job.queue)
    _log.debug(logs.JOB_ENQUEUED, job=name, job_id=job.job_id, queue=job.queue)
    return sent.job(job)


async def enqueue(app: Core, job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
    """:meth:`asyncjobs.App.enqueue`: the job through the client chain to :func:`write_job`."""
    spec = app.registry.resolve(job)
    job_kwargs, options = split_options(spec, args, kwargs)
    result: Job | None = await app.client_chain(write_job)(
        EnqueueRequest(app, spec, args, job_kwargs, options)
    )
    return result
