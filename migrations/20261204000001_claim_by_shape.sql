-- A claim takes the oldest pending job that fits its worker. Read in id order, every older pending job
-- that does not fit (8-rank jobs ahead of a 2-rank worker, trials still to be drawn) was skipped row by
-- row, so a claim cost more the more such jobs waited. Pending jobs are now counted by what decides the
-- fit (ranks, batch size, command or not, drawn or not): these shapes are few whatever a sweep's size,
-- and the oldest pending job of one shape is one probe of the index below.
CREATE TABLE pending_shapes (
    nproc      INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    is_command INTEGER NOT NULL,
    drawn      INTEGER NOT NULL,
    jobs       INTEGER NOT NULL,
    PRIMARY KEY (nproc, batch_size, is_command, drawn)
) WITHOUT ROWID;

INSERT INTO pending_shapes
SELECT nproc, batch_size, is_command, drawn_at IS NOT NULL, count(*) FROM jobs
WHERE status = 'pending' GROUP BY 1, 2, 3, 4;

-- `drawn` as a column of its own (computed, not stored): an index on the expression itself would not
-- serve `ORDER BY id` after an equality on it, and the claim would sort every pending job of a shape.
ALTER TABLE jobs ADD COLUMN drawn INTEGER GENERATED ALWAYS AS (drawn_at IS NOT NULL) VIRTUAL;
CREATE INDEX jobs_pending_shape ON jobs (nproc, batch_size, is_command, drawn, id)
WHERE status = 'pending';

-- The counts follow every way a job becomes pending or stops being pending, or changes shape while
-- pending (a trial drawn). Updates of other columns (an epoch recorded) do not fire them.
CREATE TRIGGER pending_shape_inserted AFTER INSERT ON jobs
WHEN NEW.status = 'pending'
BEGIN
    INSERT INTO pending_shapes VALUES (NEW.nproc, NEW.batch_size, NEW.is_command, NEW.drawn_at IS NOT NULL, 1)
    ON CONFLICT (nproc, batch_size, is_command, drawn) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER pending_shape_changed AFTER UPDATE OF status, nproc, batch_size, is_command, drawn_at ON jobs
WHEN OLD.status = 'pending' OR NEW.status = 'pending'
BEGIN
    UPDATE pending_shapes SET jobs = jobs - 1
    WHERE OLD.status = 'pending' AND nproc = OLD.nproc AND batch_size = OLD.batch_size
      AND is_command = OLD.is_command AND drawn = (OLD.drawn_at IS NOT NULL);
    DELETE FROM pending_shapes
    WHERE OLD.status = 'pending' AND nproc = OLD.nproc AND batch_size = OLD.batch_size
      AND is_command = OLD.is_command AND drawn = (OLD.drawn_at IS NOT NULL) AND jobs <= 0;
    INSERT INTO pending_shapes
    SELECT NEW.nproc, NEW.batch_size, NEW.is_command, NEW.drawn_at IS NOT NULL, 1 WHERE NEW.status = 'pending'
    ON CONFLICT (nproc, batch_size, is_command, drawn) DO UPDATE SET jobs = jobs + 1;
END;
