-- A job may span several workers (`nnodes`): one attempt held by a gang of members, each a worker
-- with the job's ranks free. Node 0 starts the gang (it holds the job's lease secret and alone
-- reports, uploads and finishes); the others join until there are `nnodes` of them. Every member
-- heartbeats its own row, and the job's lease is the earliest of its members': one member lost
-- and the lease reaper ends the attempt for the whole gang.
ALTER TABLE jobs ADD COLUMN nnodes INTEGER NOT NULL DEFAULT 1;
-- While a gang forms: when it is dissolved if not formed by then (the job goes back to pending, no
-- attempt counted). NULL once formed, and for a single-node job.
ALTER TABLE jobs ADD COLUMN gang_until INTEGER;
CREATE INDEX jobs_forming ON jobs (id) WHERE gang_until IS NOT NULL;

CREATE TABLE gang_members (
    job_id           INTEGER NOT NULL REFERENCES jobs (id),
    attempt          INTEGER NOT NULL,
    node_rank        INTEGER NOT NULL,
    worker           TEXT    NOT NULL,
    -- The member's rendezvous offer (node 0's is the gang's).
    addr             TEXT    NOT NULL,
    port             INTEGER NOT NULL,
    secret_hash      BLOB    NOT NULL,
    joined_at        INTEGER NOT NULL,
    -- NULL once the member's part is over (its ranks exited): it no longer holds the lease up.
    lease_expires_at INTEGER,
    PRIMARY KEY (job_id, attempt, node_rank)
) WITHOUT ROWID;
-- "Is this worker waiting in a forming gang?" at each of its claims: only live members (an ended
-- attempt's, and a member whose part is over, have no lease), so a worker's past gangs cost nothing.
CREATE INDEX gang_members_live ON gang_members (worker, job_id) WHERE lease_expires_at IS NOT NULL;

-- Pending jobs are counted by shape for claims (20261204000001): the number of nodes joins the
-- shape, so a worker that cannot join a gang (no rendezvous, or already waiting in one) skips
-- multi-node jobs with one probe, as it skips jobs too big for it.
DROP TRIGGER pending_shape_inserted;
DROP TRIGGER pending_shape_changed;
DROP INDEX jobs_pending_shape;
DROP TABLE pending_shapes;

CREATE TABLE pending_shapes (
    nproc      INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    is_command INTEGER NOT NULL,
    drawn      INTEGER NOT NULL,
    nnodes     INTEGER NOT NULL,
    jobs       INTEGER NOT NULL,
    PRIMARY KEY (nproc, batch_size, is_command, drawn, nnodes)
) WITHOUT ROWID;

INSERT INTO pending_shapes
SELECT nproc, batch_size, is_command, drawn_at IS NOT NULL, nnodes, count(*) FROM jobs
WHERE status = 'pending' GROUP BY 1, 2, 3, 4, 5;

CREATE INDEX jobs_pending_shape ON jobs (nproc, batch_size, is_command, drawn, nnodes, id)
WHERE status = 'pending';

CREATE TRIGGER pending_shape_inserted AFTER INSERT ON jobs
WHEN NEW.status = 'pending'
BEGIN
    INSERT INTO pending_shapes VALUES (NEW.nproc, NEW.batch_size, NEW.is_command, NEW.drawn_at IS NOT NULL, NEW.nnodes, 1)
    ON CONFLICT (nproc, batch_size, is_command, drawn, nnodes) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER pending_shape_changed AFTER UPDATE OF status, nproc, batch_size, is_command, drawn_at, nnodes ON jobs
WHEN OLD.status = 'pending' OR NEW.status = 'pending'
BEGIN
    UPDATE pending_shapes SET jobs = jobs - 1
    WHERE OLD.status = 'pending' AND nproc = OLD.nproc AND batch_size = OLD.batch_size
      AND is_command = OLD.is_command AND drawn = (OLD.drawn_at IS NOT NULL) AND nnodes = OLD.nnodes;
    DELETE FROM pending_shapes
    WHERE OLD.status = 'pending' AND nproc = OLD.nproc AND batch_size = OLD.batch_size
      AND is_command = OLD.is_command AND drawn = (OLD.drawn_at IS NOT NULL) AND nnodes = OLD.nnodes AND jobs <= 0;
    INSERT INTO pending_shapes
    SELECT NEW.nproc, NEW.batch_size, NEW.is_command, NEW.drawn_at IS NOT NULL, NEW.nnodes, 1 WHERE NEW.status = 'pending'
    ON CONFLICT (nproc, batch_size, is_command, drawn, nnodes) DO UPDATE SET jobs = jobs + 1;
END;

-- A gang's deadline and its members' leases go with its attempt, however the attempt ends (finish,
-- release, lease expiry, dissolution).
CREATE TRIGGER gang_ended AFTER UPDATE OF status ON jobs
WHEN OLD.status = 'running' AND NEW.status <> 'running' AND NEW.nnodes > 1
BEGIN
    UPDATE jobs SET gang_until = NULL WHERE id = NEW.id AND gang_until IS NOT NULL;
    UPDATE gang_members SET lease_expires_at = NULL WHERE job_id = NEW.id AND attempt = OLD.attempt;
END;
