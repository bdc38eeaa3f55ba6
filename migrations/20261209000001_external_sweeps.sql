-- Ask and tell (#38): a sweep whose trials run in the caller's own loop (`[run] external = true`).
-- Its jobs have `is_command = 2`, so no worker's claim ever reaches them (the claim's shapes key on
-- that column); the sweep's flag keeps them out of what an idle worker waits for.
ALTER TABLE sweeps ADD COLUMN external INTEGER NOT NULL DEFAULT 0;
