-- Population-based training (sweep/pbt.rs, store/pbt.rs): the rules beside the sweep, each
-- member's state at its last perturbation point, the segments an exploit starts, and the metrics
-- an exploit's jump back would otherwise overwrite.

-- The rules (sweep::pbt::Stored as JSON), NULL for any other sweep; and how many decisions were
-- made: decision n draws from its own stream n of the sweep's seed, so a restart continues it.
ALTER TABLE sweeps ADD COLUMN pbt TEXT;
ALTER TABLE sweeps ADD COLUMN pbt_decisions INTEGER NOT NULL DEFAULT 0;

CREATE TABLE pbt_members (
    job_id       INTEGER PRIMARY KEY REFERENCES jobs (id),
    sweep_id     INTEGER NOT NULL,
    -- The metric at perturbed_at, larger better (negated for mode = "min"); NULL before the first.
    score        REAL,
    perturbed_at INTEGER NOT NULL DEFAULT 0,
    -- In the top at perturbed_at: its checkpoint of that epoch is kept for others to copy
    -- (job-<id>/pinned-<perturbed_at>) once it has arrived (pin_ready).
    pinned       INTEGER NOT NULL DEFAULT 0,
    pin_ready    INTEGER NOT NULL DEFAULT 0,
    -- An exploit's copy of the donor's pinned checkpoint into this member's slot, not yet done:
    -- redone before the member's checkpoint is read, and at start-up.
    copy_from    INTEGER,
    copy_epoch   INTEGER
);
CREATE INDEX pbt_members_sweep ON pbt_members (sweep_id);
CREATE INDEX pbt_members_copying ON pbt_members (copy_from) WHERE copy_from IS NOT NULL;

-- Segment n >= 1 of a member: it continued after `from_epoch` (the donor's point) with `params`
-- (the donor's, explored), decided when the member reported `at_epoch`. Segment 0, written with
-- the first exploit, is the member's initial draw (its own donor, from epoch 0, at its creation).
CREATE TABLE pbt_segments (
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    segment    INTEGER NOT NULL,
    from_epoch INTEGER NOT NULL,
    at_epoch   INTEGER NOT NULL,
    donor      INTEGER NOT NULL,
    params     TEXT NOT NULL,
    decided_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, segment)
) WITHOUT ROWID;

-- The epochs past a new segment's from_epoch, moved here when its exploit is decided and filed
-- under that segment (the one that replaces them), so its reports of those epochs never
-- overwrite them.
CREATE TABLE metrics_archive (
    job_id         INTEGER NOT NULL REFERENCES jobs (id),
    segment        INTEGER NOT NULL,
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
    extra          TEXT,
    PRIMARY KEY (job_id, segment, epoch)
) WITHOUT ROWID;
