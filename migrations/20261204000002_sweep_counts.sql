-- Each sweep's job counts kept as its jobs change, so that listing sweeps (the dashboard, and every
-- idle worker's `--exit-when-idle` check) reads one row per sweep instead of every job of every sweep.
CREATE TABLE sweep_counts (
    sweep_id      INTEGER PRIMARY KEY REFERENCES sweeps (id),
    total         INTEGER NOT NULL DEFAULT 0,
    pending       INTEGER NOT NULL DEFAULT 0,
    running       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0,
    diverged      INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    cancelled     INTEGER NOT NULL DEFAULT 0,
    pruned        INTEGER NOT NULL DEFAULT 0,
    -- The sum of the jobs' recorded epochs, and of their planned epochs.
    epochs_spent  INTEGER NOT NULL DEFAULT 0,
    epochs_budget INTEGER NOT NULL DEFAULT 0,
    -- TPE trials drawn so far (every job of other sweeps).
    drawn         INTEGER NOT NULL DEFAULT 0
);

INSERT INTO sweep_counts
SELECT s.id, count(j.id), coalesce(sum(j.status = 'pending'), 0), coalesce(sum(j.status = 'running'), 0),
       coalesce(sum(j.status = 'completed'), 0), coalesce(sum(j.status = 'diverged'), 0),
       coalesce(sum(j.status = 'failed'), 0), coalesce(sum(j.status = 'cancelled'), 0),
       coalesce(sum(j.status = 'pruned'), 0), coalesce(sum(j.epoch), 0), coalesce(sum(j.epochs), 0),
       coalesce(sum(j.drawn_at IS NOT NULL), 0)
FROM sweeps s LEFT JOIN jobs j ON j.sweep_id = s.id GROUP BY s.id;

CREATE TRIGGER sweep_counted AFTER INSERT ON sweeps
BEGIN
    INSERT INTO sweep_counts (sweep_id) VALUES (NEW.id);
END;

CREATE TRIGGER sweep_job_inserted AFTER INSERT ON jobs
BEGIN
    UPDATE sweep_counts SET
        total = total + 1,
        pending = pending + (NEW.status = 'pending'), running = running + (NEW.status = 'running'),
        completed = completed + (NEW.status = 'completed'), diverged = diverged + (NEW.status = 'diverged'),
        failed = failed + (NEW.status = 'failed'), cancelled = cancelled + (NEW.status = 'cancelled'),
        pruned = pruned + (NEW.status = 'pruned'),
        epochs_spent = epochs_spent + NEW.epoch, epochs_budget = epochs_budget + NEW.epochs,
        drawn = drawn + (NEW.drawn_at IS NOT NULL)
    WHERE sweep_id = NEW.sweep_id;
END;

-- Fires on a status change, an epoch recorded, and a trial drawn; not on leases or heartbeats.
CREATE TRIGGER sweep_job_changed AFTER UPDATE OF status, epoch, epochs, drawn_at ON jobs
BEGIN
    UPDATE sweep_counts SET
        pending = pending + (NEW.status = 'pending') - (OLD.status = 'pending'),
        running = running + (NEW.status = 'running') - (OLD.status = 'running'),
        completed = completed + (NEW.status = 'completed') - (OLD.status = 'completed'),
        diverged = diverged + (NEW.status = 'diverged') - (OLD.status = 'diverged'),
        failed = failed + (NEW.status = 'failed') - (OLD.status = 'failed'),
        cancelled = cancelled + (NEW.status = 'cancelled') - (OLD.status = 'cancelled'),
        pruned = pruned + (NEW.status = 'pruned') - (OLD.status = 'pruned'),
        epochs_spent = epochs_spent + NEW.epoch - OLD.epoch,
        epochs_budget = epochs_budget + NEW.epochs - OLD.epochs,
        drawn = drawn + (NEW.drawn_at IS NOT NULL) - (OLD.drawn_at IS NOT NULL)
    WHERE sweep_id = NEW.sweep_id;
END;
