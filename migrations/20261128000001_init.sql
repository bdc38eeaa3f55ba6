-- The coordinator's state. Times are Unix milliseconds (`*_at`), passed in by the application so tests
-- control the clock. Never edit an applied migration: add a new one.

CREATE TABLE sweeps (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL,
    -- The validated spec, as JSON (the same structure users submit).
    spec         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    cancelled_at INTEGER
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    sweep_id         INTEGER NOT NULL REFERENCES sweeps (id),
    -- Position in the sweep's grid (with repeats), for stable ordering in tables.
    idx              INTEGER NOT NULL,
    -- The job's full `worker train` settings (sweep [train] + its grid point), as a JSON object.
    params           TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'diverged', 'failed', 'cancelled')),
    -- The attempt that holds (or will hold) the job; every worker write must name it.
    attempt          INTEGER NOT NULL DEFAULT 1,
    max_attempts     INTEGER NOT NULL,
    -- What a worker needs free to take the job (claims filter on these).
    batch_size       INTEGER NOT NULL,
    nproc            INTEGER NOT NULL,
    epochs           INTEGER NOT NULL,
    worker           TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- Highest epoch recorded so far.
    epoch            INTEGER NOT NULL DEFAULT 0,
    summary          TEXT,
    -- Why the job failed (or last failed), for users.
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- The running attempt's start, and how the last attempt ended: the statement that ends an attempt
    -- sets these and the trigger below files them in `attempts`, so every hot write is one statement.
    claimed_at       INTEGER,
    attempt_ended_at INTEGER,
    attempt_outcome  TEXT,
    attempt_error    TEXT,
    UNIQUE (sweep_id, idx)
);

-- Claims take the oldest pending job: this index makes that a range scan.
CREATE INDEX jobs_pending ON jobs (status, id);
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX jobs_sweep ON jobs (sweep_id, idx);

-- One row per ended attempt: who ran it and how it ended (the running one is read from `jobs`).
CREATE TABLE attempts (
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    attempt    INTEGER NOT NULL,
    worker     TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    outcome    TEXT,
    error      TEXT,
    PRIMARY KEY (job_id, attempt)
);

-- One row per (job, epoch): a repeated report of an epoch is stored once. SQLite stores a non-finite
-- REAL as NULL, which is how a diverged epoch's NaN loss is kept.
CREATE TABLE metrics (
    job_id         INTEGER NOT NULL REFERENCES jobs (id),
    -- Denormalised so a metrics write returns its sweep (for events) without a second query.
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

-- An attempt ends when its job leaves 'running' (finished, failed and requeued, lease expired).
CREATE TRIGGER attempt_ended AFTER UPDATE OF status ON jobs
WHEN OLD.status = 'running' AND NEW.status <> 'running'
BEGIN
    INSERT INTO attempts (job_id, attempt, worker, started_at, ended_at, outcome, error)
    VALUES (OLD.id, OLD.attempt, coalesce(OLD.worker, '?'), coalesce(OLD.claimed_at, NEW.attempt_ended_at),
            NEW.attempt_ended_at, NEW.attempt_outcome, NEW.attempt_error)
    ON CONFLICT (job_id, attempt) DO NOTHING;
END;

-- jobs.epoch follows the highest recorded epoch, inside the same statement as the metrics insert.
CREATE TRIGGER epoch_recorded AFTER INSERT ON metrics
BEGIN
    UPDATE jobs SET epoch = max(epoch, NEW.epoch) WHERE id = NEW.job_id;
END;
