-- The fencing token moves forward at the claim: the statement that hands a job out increments its
-- attempt, so a claim lost with the database (it was never acknowledged) cannot give the same
-- (job, attempt) to two workers. A pending job now holds the attempts made so far (0 before its
-- first claim); failures, releases and expired leases leave the number as it is.
UPDATE jobs SET attempt = attempt - 1 WHERE status = 'pending';
