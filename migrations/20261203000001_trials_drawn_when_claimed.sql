-- TPE draws each trial when a worker claims it, from the history at that moment. Until then the
-- trial is a placeholder job (drawn_at NULL) holding only the sweep's shared settings, so it counts
-- as pending work everywhere (sweep status, --exit-when-idle, the claim order) like any other job.
ALTER TABLE jobs ADD COLUMN drawn_at INTEGER;
UPDATE jobs SET drawn_at = created_at;
-- The next placeholder of a sweep, found without scanning its drawn trials.
CREATE INDEX jobs_undrawn ON jobs (sweep_id, idx) WHERE drawn_at IS NULL;
