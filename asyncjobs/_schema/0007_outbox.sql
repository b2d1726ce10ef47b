-- Transactional enqueue: jobs written in the caller's own transaction, moved to Redis by
-- the relay once that transaction commits (asyncjobs._outbox). Everything the Redis write
-- needs is decided at enqueue time and kept here, the job id above all, so writing a row
-- twice (a relay that died between the Redis write and the delete) queues its job once.
CREATE TABLE asyncjobs.outbox (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL,
    job_name    text NOT NULL,
    queue       text NOT NULL,
    score       bigint NOT NULL,             -- when the job may run: ms since the epoch (arq's score)
    expires_ms  bigint NOT NULL,             -- the job key's TTL, counted from the relay's write
    payload     bytea NOT NULL,              -- arq's job payload, as enqueue() wrote it
    unique_key  text,                        -- the uniqueness lock taken when the job reaches Redis
    unique_ms   bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
