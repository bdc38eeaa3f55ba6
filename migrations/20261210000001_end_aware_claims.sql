-- Workers that know when their allocation ends (#39): a claim carries that end, and the
-- coordinator hands out a job only if its next epoch is expected to be committed before it.
--
-- The expectation: a job's own time per epoch (the spacing of its reports within an attempt; an
-- attempt's first report is timed from its claim, so process start and restore count against it),
-- else its sweep's estimate for the job's shape (a running average over every report of that
-- sweep and shape). Both are kept by trigger as reports arrive, so a claim reads one row for each.
ALTER TABLE jobs ADD COLUMN epoch_ms INTEGER;
-- Why a worker near its end last passed the job over, rounded as it is shown ("needs about
-- 42 min per epoch; the worker had 9 min left"): written only when that changes.
ALTER TABLE jobs ADD COLUMN passed_need_ms INTEGER;
ALTER TABLE jobs ADD COLUMN passed_left_ms INTEGER;

CREATE TABLE epoch_estimates (
    sweep_id   INTEGER NOT NULL,
    nproc      INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    is_command INTEGER NOT NULL,
    nnodes     INTEGER NOT NULL,
    epoch_ms   INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, nproc, batch_size, is_command, nnodes)
) WITHOUT ROWID;

CREATE TRIGGER epoch_timed AFTER INSERT ON metrics
BEGIN
    UPDATE jobs SET epoch_ms = (
        SELECT max(1, (NEW.recorded_at - coalesce(prev.at, jobs.claimed_at))
                      / max(1, NEW.epoch - coalesce(prev.epoch, jobs.claim_epoch)))
        FROM (SELECT max(m.recorded_at) AS at, max(m.epoch) AS epoch FROM metrics m
              WHERE m.job_id = NEW.job_id AND m.attempt = NEW.attempt AND m.epoch < NEW.epoch) AS prev)
    WHERE id = NEW.job_id AND claimed_at IS NOT NULL;
    INSERT INTO epoch_estimates (sweep_id, nproc, batch_size, is_command, nnodes, epoch_ms)
    SELECT sweep_id, nproc, batch_size, is_command, nnodes, epoch_ms FROM jobs
    WHERE id = NEW.job_id AND epoch_ms IS NOT NULL
    ON CONFLICT (sweep_id, nproc, batch_size, is_command, nnodes)
    DO UPDATE SET epoch_ms = (3 * epoch_ms + excluded.epoch_ms) / 4;
END;
