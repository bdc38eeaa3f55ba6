-- Per-worker credentials (`server worker add NAME`): each a worker's identity, stored hashed. A
-- worker credential claims only under its own name (or that name and a suffix); an enrollment
-- credential only mints worker credentials whose names start with its own, a limited number of
-- times until it expires. Revoked credentials stay listed (revoked_at) and open nothing.
CREATE TABLE credentials (
    name          TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL CHECK (kind IN ('worker', 'enrollment')),
    secret_hash   BLOB    NOT NULL UNIQUE,
    -- worker: jobs it may hold at once (NULL: no cap).
    max_in_flight INTEGER,
    -- enrollment: credentials it may still mint, and until when.
    uses_left     INTEGER,
    expires_at    INTEGER,
    -- worker: the enrollment credential that minted it (NULL: added by the admin).
    enrolled_by   TEXT,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

-- Which credential claimed a job's current attempt (NULL: a shared token) and each gang member's:
-- a revoke ends exactly those leases, and the in-flight cap counts them.
ALTER TABLE jobs ADD COLUMN credential TEXT;
CREATE INDEX jobs_running_by_credential ON jobs (credential) WHERE status = 'running' AND credential IS NOT NULL;
ALTER TABLE gang_members ADD COLUMN credential TEXT;
CREATE INDEX gang_members_live_by_credential ON gang_members (credential)
    WHERE lease_expires_at IS NOT NULL AND credential IS NOT NULL;
