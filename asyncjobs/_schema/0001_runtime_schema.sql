-- The schema every asyncjobs table lives in. Later migrations add the
-- runtime's tables (flags and their audit, dead letters) to it.
COMMENT ON SCHEMA asyncjobs IS 'asyncjobs runtime tables; managed by `asyncjobs migrate`';
