-- Releases are free (they give an attempt back) only while they follow progress: a release with no
-- newly committed epoch since its claim counts as idle, and past the coordinator's budget of idle
-- releases a release charges its attempt like a failure. What a job had committed when claimed,
-- and how many idle releases it has had.
ALTER TABLE jobs ADD COLUMN claim_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN idle_releases INTEGER NOT NULL DEFAULT 0;
