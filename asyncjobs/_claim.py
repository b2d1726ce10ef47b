"""The worker's Redis scripts: claim a batch of ready jobs, finish a batch, wake idle workers.

Everything here keeps arq's format: a job waits in its queue's sorted set
(scored by the millisecond it may run) with its payload at ``arq:job:<id>``;
a worker that runs it holds ``arq:in-progress:<id>``; ``arq:retry:<id>``
counts its tries; a kept result goes to ``arq:result:<id>``. As in arq, a
running job stays in its queue, and it leaves the queue when it finishes.
Two things are asyncjobs' own and invisible to arq: the in-progress key holds
the id of the worker running the job (arq writes ``1`` and only ever asks
whether the key exists), and each worker keeps the ids of the jobs it runs
in a set, so that a live worker can hand a dead one's jobs back
(:mod:`asyncjobs._liveness`).

One :data:`CLAIM_LUA` call claims up to the worker's free slots' worth of
ready jobs across its queues, and one :data:`FINISH_LUA` call writes back
every outcome collected meanwhile, so a job costs two shares of two round
trips instead of arq's three transactions of its own. A claim is atomic: a
job is either claimed (its in-progress key set, its try counted) or still
ready, whatever happens to the connection or to Redis.

Wake-up: the enqueue scripts push a token onto :func:`wake_key` of each queue
they wrote to; an idle worker waits on those lists with ``BLPOP``, so a new
job starts within a millisecond or two rather than at the next poll. Polling
(``ASYNCJOBS_POLL_DELAY``) stays the fallback, for jobs enqueued by arq's own
client and for deferred jobs coming due. A claim that filled every slot asked
for pushes a token too, so a burst wakes the next idle worker in turn. At most
one token waits per queue, and it expires after a minute if no worker is idle.
"""

from __future__ import annotations

from typing import NamedTuple

from ._arq import ABORT_SET, IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, RETRY_PREFIX

WAKE_PREFIX = "asyncjobs:wake:"
WORKERS_KEY = "asyncjobs:workers"
"""The set of the ids of registered workers (live, or dead and not yet recovered)."""
WORKER_PREFIX = "asyncjobs:worker:"
"""``asyncjobs:worker:<id>``: a worker's registration, a hash that expires unless renewed."""
WORKER_JOBS_PREFIX = "asyncjobs:worker-jobs:"
"""``asyncjobs:worker-jobs:<id>``: the ids of the jobs that worker claimed and has not finished."""
RETRY_KEY_TTL_S = 88_400
"""How long arq keeps a job's try counter (arq's own figure)."""


def wake_key(queue: str) -> str:
    """The list an idle worker reading ``queue`` blocks on."""
    return WAKE_PREFIX + queue


WAKE_LUA = f"""
local WAKE = {WAKE_PREFIX!r}
-- Push a wake-up token for an idle worker of the queue: one at most, gone after a minute.
-- pcall: a key of another type must not fail a call that has written already.
local function wake(queue)
  redis.pcall('LPUSH', WAKE .. queue, '1')
  redis.pcall('LTRIM', WAKE .. queue, 0, 0)
  redis.pcall('PEXPIRE', WAKE .. queue, 60000)
end
"""
"""Lua: ``wake(queue)``, for every script that makes a job ready (enqueue, hand-back)."""

# Lua sees arq's prefixes as these globals; the strings come from arq's own constants.
_PREFIXES = (
    f"""
local JOB, IN_PROGRESS, RETRY, RESULT, ABORT = {JOB_PREFIX!r}, {IN_PROGRESS_PREFIX!r},
  {RETRY_PREFIX!r}, {RESULT_PREFIX!r}, {ABORT_SET!r}
"""
    + WAKE_LUA
)


CLAIM_LUA = (
    _PREFIXES
    + f"""
-- KEYS[1]: this worker's set of running job ids; KEYS[2..]: the queues to read, in order.
-- ARGV: now (ms), how many to claim, in-progress TTL (ms), worker id, how many queue
-- entries to look at per queue before asking how many jobs the fleet holds (running
-- jobs stay in their queue, as in arq, so a claim steps over them).
-- Reply, per claimed job: queue, id, score, payload (false if the job key is gone),
-- try (arq's counter, incremented), aborted (1 if arq's abort set named it).
local now, want, ttl, wid, scan = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out, claimed, held = {{}}, 0, nil
-- arq's abort set is empty but while a job is being aborted: one look per call, rather
-- than a ZREM per claimed job.
local aborts = redis.call('EXISTS', ABORT) == 1
for q = 2, #KEYS do
  local queue, offset, limit = KEYS[q], 0, scan
  while claimed < want do
    if offset >= limit then
      -- As many entries as `scan` looked at, and more wanted: they may all be running
      -- jobs. Reach past every job the registered workers hold (their running sets),
      -- however many, so that a fleet holding more than `scan` jobs of one queue still
      -- finds the ready ones behind them. Counted once per call, only when needed.
      if held == nil then
        held = 0
        for _, w in ipairs(redis.call('SMEMBERS', {WORKERS_KEY!r})) do
          held = held + redis.call('SCARD', {WORKER_JOBS_PREFIX!r} .. w)
        end
      end
      local reach = held + (want - claimed) * 2 + 100
      if reach <= limit then break end
      limit = reach
    end
    local page = math.min(limit - offset, (want - claimed) * 2 + 100)
    local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', offset, page)
    for i = 1, #ids, 2 do
      local id = ids[i]
      if redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
        local payload = redis.call('GET', JOB .. id)
        redis.call('PSETEX', IN_PROGRESS .. id, ttl, wid)
        local try = redis.call('INCR', RETRY .. id)
        redis.call('EXPIRE', RETRY .. id, {RETRY_KEY_TTL_S})
        local aborted = 0
        if aborts then aborted = redis.call('ZREM', ABORT, id) end
        redis.call('SADD', KEYS[1], id)
        out[#out + 1] = queue
        out[#out + 1] = id
        out[#out + 1] = ids[i + 1]
        out[#out + 1] = payload
        out[#out + 1] = try
        out[#out + 1] = aborted
        claimed = claimed + 1
        if claimed >= want then break end
      end
    end
    if #ids < page * 2 then break end
    offset = offset + page
  end
  if claimed >= want then
    wake(queue)  -- there may be more: wake the next idle worker reading this queue
    break
  end
end
return out
"""
)

FINISH_LUA = (
    _PREFIXES
    + """
-- KEYS[1]: this worker's set of running job ids. ARGV[1]: worker id; then six per job:
--   op, id, queue, n1, n2, result
-- op F (finished: succeeded, failed for good, aborted): the job, its try counter and its
--   queue entry go; result (if not empty) is kept for n1 ms (-1: forever); the in-progress
--   key is deleted, or kept n2 ms when n2 > 0 (arq does so for cron jobs).
-- op R (retry): the job waits in its queue again, scored n1 (it keeps its try count).
-- op Q (handed back untried, at shutdown): ready again at once, the try not counted.
-- The in-progress key is only touched while it is this worker's (not after a recovery
-- handed the job to another worker).
local wid = ARGV[1]
local aborts = redis.call('EXISTS', ABORT) == 1  -- as in the claim: one look per call
for i = 2, #ARGV, 6 do
  local op, id, queue, n1, n2, result = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5]
  local ip = IN_PROGRESS .. id
  local mine = redis.call('GET', ip) == wid
  if op == 'F' then
    if result ~= '' then
      if n1 == '-1' then
        redis.call('SET', RESULT .. id, result)
      else
        redis.call('PSETEX', RESULT .. id, n1, result)
      end
    end
    redis.call('DEL', RETRY .. id, JOB .. id)
    redis.call('ZREM', queue, id)
    if aborts then redis.call('ZREM', ABORT, id) end
    if mine then
      if tonumber(n2) > 0 then redis.call('PEXPIRE', ip, n2) else redis.call('DEL', ip) end
    end
  elseif op == 'R' then
    redis.call('ZADD', queue, 'XX', n1, id)
    if mine then redis.call('DEL', ip) end
  elseif op == 'Q' then
    if mine then
      redis.call('DEL', ip)
      if redis.call('DECR', RETRY .. id) <= 0 then redis.call('DEL', RETRY .. id) end
      if queue ~= '' then wake(queue) end  -- '' when only the id is known (a lost claim)
    end
  end
  redis.call('SREM', KEYS[1], id)
end
return 1
"""
)

RECOVER_LUA = (
    _PREFIXES
    + f"""
-- KEYS[1]: the set of registered worker ids. ARGV[1]: the calling worker's id.
-- Every other worker whose registration has expired is dead: each job it still held
-- (its in-progress key still holding that worker's id) is made ready again by
-- deleting the key (the try was counted when it was claimed), and the worker is
-- forgotten. Atomic, so with many live workers each dead one is recovered once.
-- Reply: per dead worker, its id and the list of job ids handed back.
local out = {{}}
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if wid ~= ARGV[1] and redis.call('EXISTS', {WORKER_PREFIX!r} .. wid) == 0 then
    local jobs_key = {WORKER_JOBS_PREFIX!r} .. wid
    local back = {{}}
    for _, id in ipairs(redis.call('SMEMBERS', jobs_key)) do
      if redis.call('GET', IN_PROGRESS .. id) == wid then
        redis.call('DEL', IN_PROGRESS .. id)
        back[#back + 1] = id
      end
    end
    redis.call('DEL', jobs_key)
    redis.call('SREM', KEYS[1], wid)
    out[#out + 1] = wid
    out[#out + 1] = back
  end
end
return out
"""
)


class Claimed(NamedTuple):
    """One job a claim handed this worker."""

    queue: str
    job_id: str
    score: int
    payload: bytes | None
    job_try: int
    aborted: bool


def parse_claim(reply: list[object]) -> list[Claimed]:
    """The jobs in a :data:`CLAIM_LUA` reply."""
    jobs = []
    for i in range(0, len(reply), 6):
        queue, job_id, score, payload, job_try, aborted = reply[i : i + 6]
        jobs.append(
            Claimed(
                _text(queue),
                _text(job_id),
                int(float(_text(score))),
                payload if isinstance(payload, bytes) else None,
                int(job_try),  # type: ignore[call-overload]  # an integer reply
                bool(aborted),
            )
        )
    return jobs


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
