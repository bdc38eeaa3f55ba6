-- Only the lease holder may write: each claim hands its worker a random secret, and every write of
-- that attempt must carry it. The attempt number alone is public (any read shows it). Stored as a
-- SHA-256 hash, so a copy of the database does not hand out leases, and a restart keeps them valid.
ALTER TABLE jobs ADD COLUMN lease_secret_hash BLOB;
