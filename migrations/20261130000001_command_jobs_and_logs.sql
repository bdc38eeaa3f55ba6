-- Command jobs (a sweep's `[command]`: any program under the worker's environment contract) and
-- every job's log.

-- The sweep's `[command]` as JSON (argv with placeholders, workdir, ranks); NULL: `worker train`.
ALTER TABLE sweeps ADD COLUMN command TEXT;

-- Set on the jobs of a command sweep, so a claim from a worker that does not run commands skips
-- them without reading the sweep.
ALTER TABLE jobs ADD COLUMN is_command INTEGER NOT NULL DEFAULT 0;

-- Bytes of log kept for the job (all attempts): appends add, trimming subtracts, so the limit is
-- checked without summing chunks.
ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;

-- Metrics a report names beyond the columns of `metrics`, as a JSON object {name: number|null}.
ALTER TABLE metrics ADD COLUMN extra TEXT;

-- Each attempt's output (stdout and stderr, merged by line as produced), in chunks as the worker
-- sent them. `start` is the chunk's byte offset in that attempt's output: a retried append of the
-- same bytes is recognised and stored once. The oldest chunks of a job are dropped first when it
-- exceeds the coordinator's --max-log-mib.
CREATE TABLE logs (
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    start   INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (job_id, attempt, start)
) WITHOUT ROWID;
