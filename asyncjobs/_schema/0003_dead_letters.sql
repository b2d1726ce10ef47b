-- Jobs that ran out of tries, kept until an operator retries or purges them.
CREATE TABLE asyncjobs.dead_letters (
    id               bigserial PRIMARY KEY,
    job_name         text NOT NULL,
    job_id           text NOT NULL,
    queue            text NOT NULL,
    args             jsonb,              -- NULL when the job redacts its arguments
    kwargs           jsonb,
    redacted         boolean NOT NULL DEFAULT false,
    tries            integer NOT NULL,
    error            text NOT NULL,
    traceback        text NOT NULL,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_job_last ON asyncjobs.dead_letters (job_name, last_failed_at DESC);
