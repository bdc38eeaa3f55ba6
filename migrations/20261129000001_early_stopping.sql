-- Early stopping (ASHA, median): a `pruned` status, the stop flag a decision sets, the values ASHA
-- compares at each rung, and the indexes that keep each decision to the jobs it compares.
--
-- SQLite cannot change a CHECK constraint, so `jobs` is rebuilt, and with it the two tables whose
-- foreign keys point at it (attempts, metrics): the new children reference the new `jobs_new`, which
-- the rename turns into `jobs`; the old tables are dropped children first, so no statement ever
-- leaves a row without its parent (migrations run in a transaction, where foreign keys cannot be
-- switched off).

CREATE TABLE jobs_new (
    id               INTEGER PRIMARY KEY,
    sweep_id         INTEGER NOT NULL REFERENCES sweeps (id),
    idx              INTEGER NOT NULL,
    params           TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'diverged', 'failed', 'cancelled', 'pruned')),
    -- Attempts made so far (a pending job) or the attempt that holds it (a running one).
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    batch_size       INTEGER NOT NULL,
    nproc            INTEGER NOT NULL,
    epochs           INTEGER NOT NULL,
    worker           TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- Set once by an early-stopping decision, never cleared: the worker learns it from the metrics
    -- reply or its next heartbeat, and however the attempt ends, the job ends `pruned`.
    stop_requested   INTEGER NOT NULL DEFAULT 0,
    epoch            INTEGER NOT NULL DEFAULT 0,
    summary          TEXT,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    claimed_at       INTEGER,
    attempt_ended_at INTEGER,
    attempt_outcome  TEXT,
    attempt_error    TEXT,
    UNIQUE (sweep_id, idx)
);

INSERT INTO jobs_new (id, sweep_id, idx, params, status, attempt, max_attempts, batch_size, nproc, epochs,
                      worker, lease_expires_at, cancel_requested, epoch, summary, error, created_at,
                      started_at, finished_at, claimed_at, attempt_ended_at, attempt_outcome, attempt_error)
SELECT id, sweep_id, idx, params, status, attempt, max_attempts, batch_size, nproc, epochs,
       worker, lease_expires_at, cancel_requested, epoch, summary, error, created_at,
       started_at, finished_at, claimed_at, attempt_ended_at, attempt_outcome, attempt_error
FROM jobs;

CREATE TABLE attempts_new (
    job_id     INTEGER NOT NULL REFERENCES jobs_new (id),
    attempt    INTEGER NOT NULL,
    worker     TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    outcome    TEXT,
    error      TEXT,
    PRIMARY KEY (job_id, attempt)
);
INSERT INTO attempts_new SELECT job_id, attempt, worker, started_at, ended_at, outcome, error FROM attempts;

CREATE TABLE metrics_new (
    job_id         INTEGER NOT NULL REFERENCES jobs_new (id),
    sweep_id       INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    lr             REAL,
    train_loss     REAL,
    test_loss      REAL,
    accuracy       REAL,
    precision      REAL,
    recall         REAL,
    f1             REAL,
    images_per_sec REAL,
    seconds        REAL,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (job_id, epoch)
) WITHOUT ROWID;
INSERT INTO metrics_new SELECT job_id, sweep_id, epoch, attempt, lr, train_loss, test_loss, accuracy, precision,
                               recall, f1, images_per_sec, seconds, recorded_at FROM metrics;

DROP TABLE metrics;
DROP TABLE attempts;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
ALTER TABLE attempts_new RENAME TO attempts;
ALTER TABLE metrics_new RENAME TO metrics;

CREATE INDEX jobs_pending ON jobs (status, id);
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX jobs_sweep ON jobs (sweep_id, idx);
-- The median rule reads a sweep's completed jobs (then each one's epoch by the metrics key).
CREATE INDEX jobs_sweep_status ON jobs (sweep_id, status);

-- Both triggers as in the first migration (a dropped table takes its triggers with it).
CREATE TRIGGER epoch_recorded AFTER INSERT ON metrics
BEGIN
    UPDATE jobs SET epoch = max(epoch, NEW.epoch) WHERE id = NEW.job_id;
END;

CREATE TRIGGER attempt_ended AFTER UPDATE OF status ON jobs
WHEN OLD.status = 'running' AND NEW.status <> 'running'
BEGIN
    INSERT INTO attempts (job_id, attempt, worker, started_at, ended_at, outcome, error)
    VALUES (OLD.id, OLD.attempt, coalesce(OLD.worker, '?'), coalesce(OLD.claimed_at, NEW.attempt_ended_at),
            NEW.attempt_ended_at, NEW.attempt_outcome, NEW.attempt_error)
    ON CONFLICT (job_id, attempt) DO NOTHING;
END;

-- The sweep's `[early_stop]` rule as JSON (NULL: every job runs to its last epoch), read on every
-- metrics report, so kept apart from the whole spec.
ALTER TABLE sweeps ADD COLUMN early_stop TEXT;

-- ASHA: the value a job had when it reached each rung (epoch min_epochs * eta^rung), kept once.
-- A job's next rung is the number of its rows. The index covers a decision's two counts (values at
-- the rung, and those better than the job's), so neither reads a table row.
CREATE TABLE rungs (
    job_id   INTEGER NOT NULL REFERENCES jobs (id),
    sweep_id INTEGER NOT NULL,
    rung     INTEGER NOT NULL,
    value    REAL    NOT NULL,
    PRIMARY KEY (job_id, rung)
) WITHOUT ROWID;
CREATE INDEX rungs_sweep ON rungs (sweep_id, rung, value);

-- Diverged runs are never compared: a job that ends diverged leaves the rungs.
CREATE TRIGGER diverged_leaves_the_rungs AFTER UPDATE OF status ON jobs
WHEN NEW.status = 'diverged'
BEGIN
    DELETE FROM rungs WHERE job_id = NEW.id;
END;
