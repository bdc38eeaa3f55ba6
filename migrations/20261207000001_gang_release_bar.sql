-- A gang member that gives a forming or running gang's attempt back may not come straight back as
-- node 0 of the same job (node 0 names the rendezvous every member connects to): the worker that
-- released it, and until when it is barred (a gang window after the release).
ALTER TABLE jobs ADD COLUMN gang_barred TEXT;
ALTER TABLE jobs ADD COLUMN gang_barred_until INTEGER;
