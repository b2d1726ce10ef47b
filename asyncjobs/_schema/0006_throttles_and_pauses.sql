-- Incident controls beside the kill switch (asyncjobs._controls): a paused queue
-- (kind 'pause', target the queue) and a throttled job class (kind 'throttle', target
-- the job, at most rate_limit starts per period_s seconds). Their changes are audited
-- in flag_history under the names pause:<queue> and throttle:<job>, the rate in detail.
CREATE TABLE asyncjobs.controls (
    kind        text NOT NULL CHECK (kind IN ('pause', 'throttle')),
    target      text NOT NULL CHECK (length(target) BETWEEN 1 AND 200),
    rate_limit  integer CHECK (rate_limit >= 1),
    period_s    integer CHECK (period_s IN (1, 60, 3600)),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    reason      text,
    PRIMARY KEY (kind, target),
    CHECK ((kind = 'throttle') = (rate_limit IS NOT NULL AND period_s IS NOT NULL))
);

ALTER TABLE asyncjobs.flag_history ADD COLUMN detail text;  -- a throttle's rate, e.g. 10/s
