-- Why a job is dead, and, for a payload the worker could not run (no such job, not a
-- job payload at all), the payload itself as it was in Redis, so nothing is lost.
ALTER TABLE asyncjobs.dead_letters
    ADD COLUMN reason  text NOT NULL DEFAULT 'failed',  -- failed, unknown_job, bad_payload, bad_arguments, tries_exhausted
    ADD COLUMN payload bytea;                           -- the raw payload, for unknown_job and bad_payload
