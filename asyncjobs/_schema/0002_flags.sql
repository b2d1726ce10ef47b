-- Feature flags (the kill switch: disable_<job_name>), their audit trail, and
-- how often each one rejected an enqueue or skipped an execution.
CREATE TABLE asyncjobs.flags (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,127}$'),
    enabled     boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    reason      text
);

CREATE TABLE asyncjobs.flag_history (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    old_value   boolean,            -- NULL: the flag did not exist before
    new_value   boolean NOT NULL,
    actor       text NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flag_history_name_at ON asyncjobs.flag_history (name, at DESC);

CREATE TABLE asyncjobs.flag_counters (
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('rejected', 'skipped')),
    count       bigint NOT NULL DEFAULT 0,
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, kind)
);
