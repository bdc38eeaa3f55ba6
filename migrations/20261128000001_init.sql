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
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (sweep_id, idx)
);

-- Claims take the oldest pending job: this index makes that a range scan.
CREATE INDEX jobs_pending ON jobs (status, id);
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX jobs_sweep ON jobs (sweep_id, idx);

-- One row per attempt: who ran it and how it ended.
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
