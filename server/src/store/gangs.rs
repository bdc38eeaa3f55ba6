//! Jobs that span nodes: one attempt held by a gang of workers. The first claim of such a job starts
//! the gang as node 0 (the job's usual claim, see [`super::lease`]); later claims join a forming gang
//! before they take anything else, so two workers and two 2-node jobs form one gang rather than two
//! halves. A worker waits in at most one forming gang: its claims skip multi-node jobs meanwhile, so
//! no set of workers can hold each other's gangs half formed. A gang not formed by its deadline is
//! dissolved (the job pending again, no attempt counted). Every member heartbeats its own lease; the
//! job's lease is the earliest of them, so the lease reaper ends the attempt for the whole gang when
//! any member is lost.
use super::*;
use protocol::views::GangMember;
use protocol::{GangPart, GangState, Rendezvous};

/// A job taken by a claim, single-node or a gang's part (read back as a [`Claim`]).
#[derive(Debug)]
pub(super) struct Taken {
    pub id: i64,
    pub sweep_id: i64,
    pub attempt: i64,
    pub params: String,
    pub is_command: bool,
    pub gang: Option<GangPart>,
}

/// Who claims, as the gang statements need it.
pub(super) struct Claimant<'a> {
    pub worker: &'a str,
    pub ranks: Option<i64>,
    pub max_batch: Option<i64>,
    pub accepts_commands: bool,
    pub rendezvous: &'a Rendezvous,
    /// The worker's own credential's name (None: a shared token).
    pub credential: Option<&'a str>,
    pub secret_hash: &'a [u8],
    pub now: i64,
    /// The new member's lease.
    pub until: i64,
    /// Ms the worker has before it gives its jobs back (a claim's deadline): it joins only a gang
    /// whose job's next epoch is expected to fit (as [`super::lease`]'s take judges a job).
    pub left: Option<i64>,
}

/// The worker is a member of a gang still forming: it may not wait in a second one.
pub(super) async fn waiting_in_a_gang(c: &mut SqliteConnection, worker: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM gang_members m JOIN jobs j ON j.id = m.job_id AND j.attempt = m.attempt
                          WHERE m.worker = ? AND m.lease_expires_at IS NOT NULL AND j.gang_until IS NOT NULL) AS "waiting!: bool""#,
        worker
    )
    .fetch_one(&mut *c)
    .await?)
}

/// Joins the oldest forming gang that fits the claimant and has no member of that name: the next
/// node rank, the gang formed when it is the last. None when no gang fits.
pub(super) async fn join_forming(
    c: &mut SqliteConnection,
    w: &Claimant<'_>,
) -> Result<Option<Taken>> {
    let gang = sqlx::query!(
        r#"SELECT j.id AS "id!", j.sweep_id AS "sweep_id!", j.attempt AS "attempt!", j.params AS "params!",
                  j.is_command AS "is_command!: bool", j.nnodes AS "nnodes!",
                  (SELECT count(*) FROM gang_members m WHERE m.job_id = j.id AND m.attempt = j.attempt) AS "joined!: i64",
                  z.addr AS "addr!", z.port AS "port!: i64"
           FROM jobs j INDEXED BY jobs_forming
           JOIN gang_members z ON z.job_id = j.id AND z.attempt = j.attempt AND z.node_rank = 0
           WHERE j.gang_until IS NOT NULL AND j.status = 'running'
             AND (?1 IS NULL OR j.nproc <= ?1) AND (?2 IS NULL OR j.batch_size <= ?2) AND (?3 OR j.is_command = 0)
             AND j.cancel_requested = 0 AND j.stop_requested = 0
             AND NOT EXISTS (SELECT 1 FROM gang_members m WHERE m.job_id = j.id AND m.attempt = j.attempt AND m.worker = ?4)
             AND (?5 IS NULL OR coalesce(j.epoch_ms, (SELECT e.epoch_ms FROM epoch_estimates e
                    WHERE e.sweep_id = j.sweep_id AND e.nproc = j.nproc AND e.batch_size = j.batch_size
                      AND e.is_command = j.is_command AND e.nnodes = j.nnodes), 0) <= ?5)
           ORDER BY j.id LIMIT 1"#,
        w.ranks,
        w.max_batch,
        w.accepts_commands,
        w.worker,
        w.left
    )
    .fetch_optional(&mut *c)
    .await?;
    let Some(g) = gang else {
        return Ok(None);
    };
    let node_rank = g.joined;
    add_member(c, g.id, g.attempt, node_rank, w).await?;
    // The last member forms the gang; the job's lease becomes the earliest of its members'.
    let formed = node_rank + 1 >= g.nnodes;
    sqlx::query!(
        "UPDATE jobs SET gang_until = CASE WHEN ?2 THEN NULL ELSE gang_until END,
                lease_expires_at = min(lease_expires_at, ?3)
         WHERE id = ?1",
        g.id,
        formed,
        w.until
    )
    .execute(&mut *c)
    .await?;
    Ok(Some(Taken {
        id: g.id,
        sweep_id: g.sweep_id,
        attempt: g.attempt,
        params: g.params,
        is_command: g.is_command,
        gang: Some(GangPart {
            nnodes: g.nnodes,
            node_rank,
            master: Rendezvous {
                addr: g.addr,
                port: u16::try_from(g.port)
                    .map_err(|_| StoreError::Corrupt(format!("gang port {}", g.port)))?,
            },
        }),
    }))
}

/// A member's row: its rendezvous offer, its secret's hash and its lease.
pub(super) async fn add_member(
    c: &mut SqliteConnection,
    job: i64,
    attempt: i64,
    node_rank: i64,
    w: &Claimant<'_>,
) -> Result<()> {
    let port = i64::from(w.rendezvous.port);
    sqlx::query!(
        "INSERT INTO gang_members (job_id, attempt, node_rank, worker, addr, port, secret_hash, joined_at, lease_expires_at, credential)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        job,
        attempt,
        node_rank,
        w.worker,
        w.rendezvous.addr,
        port,
        w.secret_hash,
        w.now,
        w.until,
        w.credential
    )
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Sets a member's lease (None: its part is over, it no longer holds the job's lease up) and the
/// job's lease to the earliest of its live members'. While `attempt` holds the job and has that
/// node: the job's cancel and stop flags and how far its gang has formed; None otherwise.
async fn member_lease(
    c: &mut SqliteConnection,
    job: i64,
    attempt: i64,
    node_rank: i64,
    until: Option<i64>,
) -> Result<Option<(bool, bool, GangState)>> {
    sqlx::query!(
        "UPDATE gang_members SET lease_expires_at = ?4
         WHERE job_id = ?1 AND attempt = ?2 AND node_rank = ?3 AND lease_expires_at IS NOT NULL",
        job,
        attempt,
        node_rank,
        until
    )
    .execute(&mut *c)
    .await?;
    let row = sqlx::query!(
        r#"UPDATE jobs SET lease_expires_at = coalesce(
               (SELECT min(m.lease_expires_at) FROM gang_members m WHERE m.job_id = jobs.id AND m.attempt = jobs.attempt),
               lease_expires_at)
           WHERE id = ?1 AND attempt = ?2 AND status = 'running'
             AND EXISTS (SELECT 1 FROM gang_members m WHERE m.job_id = ?1 AND m.attempt = ?2 AND m.node_rank = ?3)
           RETURNING cancel_requested AS "cancel!", stop_requested AS "stop!", nnodes AS "nnodes!",
                     (SELECT count(*) FROM gang_members m WHERE m.job_id = ?1 AND m.attempt = ?2) AS "joined!: i64""#,
        job,
        attempt,
        node_rank
    )
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| {
        let gang = GangState {
            joined: r.joined,
            nnodes: r.nnodes,
        };
        (r.cancel != 0, r.stop != 0, gang)
    }))
}

impl Store {
    /// A gang member's heartbeat: its own lease renewed, the job's lease the earliest of its
    /// members' (a member whose part is over no longer counts), and how far the gang has formed.
    pub async fn heartbeat_member(
        &self,
        job: i64,
        attempt: i64,
        node_rank: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<HeartbeatReply> {
        let until = now + lease_ms;
        // Two statements (the member's lease, then the job's from its members'): both or neither.
        let row = self
            .writer
            .run_many(move |c| {
                async move { member_lease(c, job, attempt, node_rank, Some(until)).await }.boxed()
            })
            .await?;
        match row {
            Some((cancel, stop, gang)) => Ok(HeartbeatReply {
                cancel,
                stop,
                lease_expires_at: until,
                gang: Some(gang),
            }),
            // The attempt holds the job, but has no such node: a client's mistake, not a lost lease.
            None if self.check_fence(job, attempt).await.is_ok() => Err(StoreError::Invalid(
                format!("node_rank: job {job}'s attempt {attempt} has no node {node_rank} (a single-node job's heartbeats name none)"),
            )),
            None => Err(self.fence_error(job, attempt).await),
        }
    }

    /// A member other than node 0 whose ranks have exited: it no longer holds the job's lease up
    /// (node 0 finishes the job). Ok while `attempt` is the job's current one, ended or not.
    pub async fn member_done(&self, job: i64, attempt: i64, node_rank: i64) -> Result<JobChange> {
        let row = self
            .writer
            .run_many(move |c| {
                async move {
                    member_lease(c, job, attempt, node_rank, None).await?;
                    Ok(sqlx::query!(
                        r#"SELECT sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!" FROM jobs WHERE id = ?"#,
                        job
                    )
                    .fetch_optional(&mut *c)
                    .await?)
                }
                .boxed()
            })
            .await?;
        match row {
            Some(r) if r.attempt == attempt => change_of(job, r.sweep_id, &r.status, attempt),
            _ => Err(self.fence_error(job, attempt).await),
        }
    }

    /// The hash of a member's lease secret; None when the attempt has no such member.
    pub async fn member_secret(
        &self,
        job: i64,
        attempt: i64,
        node_rank: i64,
    ) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar!(
            "SELECT secret_hash FROM gang_members WHERE job_id = ? AND attempt = ? AND node_rank = ?",
            job,
            attempt,
            node_rank
        )
        .fetch_optional(&self.worker_read)
        .await?)
    }

    /// Gangs not formed by their deadline go back to pending without using up an attempt (as a
    /// release does; cancelled or pruned if that was requested meanwhile). Their members learn it
    /// on their next heartbeat (409) and free their slots.
    pub async fn dissolve_unformed(&self, now: i64) -> Result<Vec<JobChange>> {
        let ranks = self.ranks.clone();
        let rows = self.writer.run(move |one| async move { let rows = one.fetch_all(sqlx::query!(
            r#"UPDATE jobs INDEXED BY jobs_forming SET
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                               WHEN stop_requested = 1 THEN 'pruned'
                               ELSE 'pending' END,
                 max_attempts = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN max_attempts
                                     ELSE max_attempts + 1 END,
                 finished_at = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN ?1 ELSE finished_at END,
                 worker = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN worker END,
                 lease_expires_at = NULL,
                 attempt_ended_at = ?1, attempt_outcome = 'released',
                 attempt_error = 'its gang did not form in time: ' ||
                     (SELECT count(*) FROM gang_members m WHERE m.job_id = jobs.id AND m.attempt = jobs.attempt) ||
                     ' of ' || nnodes || ' workers joined'
               WHERE gang_until IS NOT NULL AND gang_until < ?1 AND status = 'running'
               RETURNING id AS "id!", sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
            now
        ))
        .await?;
        for r in &rows {
            super::lease::attempt_ended(&ranks, r.sweep_id, r.id, status_of(&r.status)?);
        }
        Ok(rows) }.boxed())
        .await?;
        self.ended(
            rows.into_iter()
                .map(|r| (r.id, r.sweep_id, r.status, r.attempt)),
        )
        .await
    }

    /// A job's gang members of attempts `first..=last`, by attempt and node rank.
    pub(super) async fn members_of(
        &self,
        job: i64,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, GangMember)>> {
        Ok(sqlx::query!(
            r#"SELECT attempt, node_rank, worker, joined_at, lease_expires_at IS NULL AS "done!: bool"
               FROM gang_members WHERE job_id = ? AND attempt BETWEEN ? AND ? ORDER BY attempt, node_rank"#,
            job,
            first,
            last
        )
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| {
            (
                r.attempt,
                GangMember {
                    node_rank: r.node_rank,
                    worker: r.worker,
                    joined_at: r.joined_at,
                    done: r.done,
                },
            )
        })
        .collect())
    }
}
