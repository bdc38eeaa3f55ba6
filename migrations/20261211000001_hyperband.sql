-- Hyperband with max_epochs = "auto" (Optuna's): the largest resource is fixed once, from the jobs
-- completed when the sweep is first judged after one completes, and must not move after a restart.
ALTER TABLE sweeps ADD COLUMN hyperband_max INTEGER;
