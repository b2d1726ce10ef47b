-- The kill switch beyond whole job classes: argument rules (stop only the jobs whose
-- named argument matches) and timed stops (a flag or a rule that ends by itself).

-- When an enabled flag turns itself off again (NULL: when someone disables it).
ALTER TABLE asyncjobs.flags ADD COLUMN expires_at timestamptz;

-- One rule per row: its conditions are ANDed. job is a job name, or '*' for every
-- job class whose signature has all the rule's arguments (--all-jobs).
CREATE TABLE asyncjobs.flag_rules (
    id          bigserial PRIMARY KEY,
    job         text NOT NULL CHECK (job = '*' OR job ~ '^[a-z][a-z0-9_]{0,119}$'),
    conditions  jsonb NOT NULL,          -- [[arg, op, value], ...]; value a list for 'in'
    rule        text NOT NULL,           -- the canonical text, e.g. customer_id=42
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    reason      text,
    expires_at  timestamptz,             -- NULL: until removed
    rejected    bigint NOT NULL DEFAULT 0,
    skipped     bigint NOT NULL DEFAULT 0,
    UNIQUE (job, rule)
);

-- The audit: a history row names the rule it added or removed, and the end it set.
ALTER TABLE asyncjobs.flag_history
    ADD COLUMN rule       text,           -- the rule's text; NULL for a whole-flag change
    ADD COLUMN expires_at timestamptz;    -- the end of the timed stop this change set
