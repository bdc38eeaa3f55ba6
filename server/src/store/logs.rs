//! Every job's log: each attempt's output as the worker sent it, in chunks keyed by their byte
//! offset. An append is fenced like every worker write and idempotent (a retried chunk is stored
//! once); the job keeps at most `max_bytes` (all attempts), dropping its oldest chunks first but
//! never the one just written.
use super::*;

/// What an append left: the job's sweep (for the event), where the attempt's log ends now and
/// how many of the chunk's bytes were new.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Appended {
    pub sweep_id: i64,
    pub end: i64,
    pub stored: i64,
    /// How much the job's kept bytes grew (the new bytes less what trimming dropped).
    pub grown: i64,
}

/// A read: bytes from `offset` (later than asked when older output was dropped), up to `next`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRead {
    pub attempt: i64,
    pub offset: i64,
    pub next: i64,
    pub data: Vec<u8>,
}

/// Largest chunk an append may carry.
pub const MAX_CHUNK: usize = 256 << 10;
/// Chunks read per query while serving a read.
const READ_PAGE: i64 = 64;
/// Chunks dropped at most per append (trimming stays a bounded amount of work).
const TRIM_BATCH: i64 = 1024;

impl LogRead {
    /// Takes the part of the chunk at `start` that lies at or after `next`; a gap (output dropped
    /// by trimming, or never sent) moves on to where the chunk starts.
    fn append(&mut self, start: i64, data: &[u8]) {
        let end = start + data.len() as i64;
        if end <= self.next {
            return;
        }
        if start > self.next {
            if self.data.is_empty() {
                self.offset = start;
            }
            self.next = start;
        }
        self.data
            .extend_from_slice(&data[(self.next - start) as usize..]);
        self.next = end;
    }
}

impl Store {
    /// Every job's kept log bytes together (read once at start, for the global quota).
    pub async fn log_bytes_total(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar!(r#"SELECT coalesce(sum(log_bytes), 0) AS "n!: i64" FROM jobs"#)
                .fetch_one(&self.read)
                .await?,
        )
    }

    pub async fn append_log(
        &self,
        job: i64,
        attempt: i64,
        offset: i64,
        gap: i64,
        data: Vec<u8>,
        max_bytes: i64,
    ) -> Result<Appended> {
        self.writer
            .run_many(move |c| {
                async move {
                    let sweep_id = fence_in(c, job, attempt).await?;
                    let end = log_end(c, job, attempt).await?;
                    // A later offset is output the worker dropped, and says so; any other gap
                    // would move the end past every later append, which would then be dropped
                    // as retries.
                    if offset > end.saturating_add(gap) {
                        return Err(StoreError::Invalid(format!(
                            "offset {offset} leaves a gap: the attempt's log ends at byte {end} \
                             and the append declares {gap} bytes dropped"
                        )));
                    }
                    // A retry of bytes already stored keeps only what is new.
                    let skip = (end - offset).clamp(0, data.len() as i64) as usize;
                    let (start, new) = (offset + skip as i64, &data[skip..]);
                    if new.is_empty() {
                        return Ok(Appended {
                            sweep_id,
                            end,
                            stored: 0,
                            grown: 0,
                        });
                    }
                    let len = new.len() as i64;
                    sqlx::query!(
                        "INSERT INTO logs (job_id, attempt, start, data) VALUES (?, ?, ?, ?)",
                        job,
                        attempt,
                        start,
                        new
                    )
                    .execute(&mut *c)
                    .await?;
                    let kept = sqlx::query_scalar!(
                        "UPDATE jobs SET log_bytes = log_bytes + ? WHERE id = ? RETURNING log_bytes",
                        len,
                        job
                    )
                    .fetch_one(&mut *c)
                    .await?;
                    let trimmed = match kept > max_bytes {
                        true => trim(c, job, kept - max_bytes, (attempt, start)).await?,
                        false => 0,
                    };
                    Ok(Appended {
                        sweep_id,
                        end: start + len,
                        stored: len,
                        grown: len - trimmed,
                    })
                }
                .boxed()
            })
            .await
    }

    /// Up to `limit` bytes of `attempt`'s log (default: the job's latest attempt) from `offset`.
    pub async fn read_log(
        &self,
        job: i64,
        attempt: Option<i64>,
        offset: i64,
        limit: usize,
    ) -> Result<LogRead> {
        let latest = sqlx::query_scalar!("SELECT attempt FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        let attempt = attempt.unwrap_or(latest);
        // The chunk holding `offset` (or the first one): the newest start at or before it.
        let mut from = sqlx::query_scalar!(
            r#"SELECT max(start) AS "start: i64" FROM logs WHERE job_id = ? AND attempt = ? AND start <= ?"#,
            job,
            attempt,
            offset
        )
        .fetch_one(&self.read)
        .await?
        .unwrap_or(0);
        let mut out = LogRead {
            attempt,
            offset,
            next: offset,
            data: vec![],
        };
        // Pages of chunks (bounded memory whatever their sizes) until `limit` bytes are out.
        while out.data.len() < limit {
            let rows = sqlx::query!(
                r#"SELECT start, data FROM logs WHERE job_id = ? AND attempt = ? AND start >= ?
                   ORDER BY start LIMIT ?"#,
                job,
                attempt,
                from,
                READ_PAGE
            )
            .fetch_all(&self.read)
            .await?;
            let full_page = rows.len() as i64 == READ_PAGE;
            for r in rows {
                from = r.start + 1;
                out.append(r.start, &r.data);
                if out.data.len() >= limit {
                    break;
                }
            }
            if !full_page {
                break;
            }
        }
        Ok(out)
    }
}

/// The job's sweep when `attempt` holds it; the fence's conflict otherwise.
async fn fence_in(c: &mut SqliteConnection, job: i64, attempt: i64) -> Result<i64> {
    let row = sqlx::query!(
        "SELECT sweep_id, status, attempt FROM jobs WHERE id = ?",
        job
    )
    .fetch_optional(&mut *c)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
    if row.status == JobStatus::Running.as_str() && row.attempt == attempt {
        Ok(row.sweep_id)
    } else {
        Err(super::lease::not_holding(
            job,
            attempt,
            &row.status,
            row.attempt,
        ))
    }
}

async fn log_end(c: &mut SqliteConnection, job: i64, attempt: i64) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT start + length(data) AS "end!: i64" FROM logs WHERE job_id = ? AND attempt = ?
           ORDER BY start DESC LIMIT 1"#,
        job,
        attempt
    )
    .fetch_optional(&mut *c)
    .await?
    .unwrap_or(0))
}

/// Drops the job's oldest chunks until `excess` bytes are gone, stopping before `newest`; how many
/// bytes it dropped.
async fn trim(c: &mut SqliteConnection, job: i64, excess: i64, newest: (i64, i64)) -> Result<i64> {
    let oldest = sqlx::query!(
        r#"SELECT attempt, start, length(data) AS "len!: i64" FROM logs WHERE job_id = ?
           ORDER BY attempt, start LIMIT ?"#,
        job,
        TRIM_BATCH
    )
    .fetch_all(&mut *c)
    .await?;
    let (mut removed, mut last) = (0, None);
    for r in oldest {
        if removed >= excess || (r.attempt, r.start) == newest {
            break;
        }
        removed += r.len;
        last = Some((r.attempt, r.start));
    }
    let Some((attempt, start)) = last else {
        return Ok(0);
    };
    sqlx::query!(
        "DELETE FROM logs WHERE job_id = ?1 AND (attempt < ?2 OR (attempt = ?2 AND start <= ?3))",
        job,
        attempt,
        start
    )
    .execute(&mut *c)
    .await?;
    sqlx::query!(
        "UPDATE jobs SET log_bytes = log_bytes - ? WHERE id = ?",
        removed,
        job
    )
    .execute(&mut *c)
    .await?;
    Ok(removed)
}
