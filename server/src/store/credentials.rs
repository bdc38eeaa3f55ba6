//! Per-worker credentials: added by the admin, minted through an enrollment credential, listed,
//! revoked (which gives back every job the credential holds, no attempt charged).
use super::*;
use crate::credentials::Credential;
use protocol::credentials::{CredentialKind, CredentialRow};

/// A credential to store.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub name: String,
    pub kind: CredentialKind,
    pub secret_hash: Vec<u8>,
    pub max_in_flight: Option<i64>,
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
}

fn kind_of(s: &str) -> Result<CredentialKind> {
    match s {
        "worker" => Ok(CredentialKind::Worker),
        "enrollment" => Ok(CredentialKind::Enrollment),
        other => Err(StoreError::Corrupt(format!("credential kind {other:?}"))),
    }
}

impl Store {
    /// The live credentials with their token hashes (what the coordinator loads at start).
    pub async fn live_credentials(&self) -> Result<Vec<(Vec<u8>, Credential)>> {
        let rows = sqlx::query!(
            r#"SELECT name AS "name!", kind, secret_hash, max_in_flight FROM credentials WHERE revoked_at IS NULL"#
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                let c = Credential {
                    name: r.name,
                    kind: kind_of(&r.kind)?,
                    max_in_flight: r.max_in_flight,
                };
                Ok((r.secret_hash, c))
            })
            .collect()
    }

    /// Stores a new credential; a name already taken (live or revoked) is a 409.
    pub async fn add_credential(&self, row: NewRow, now: i64) -> Result<()> {
        let name = row.name.clone();
        let added = self
            .writer
            .run(move |one| {
                async move {
                    let kind = row.kind.as_str();
                    Ok(one
                        .execute(sqlx::query!(
                            "INSERT INTO credentials (name, kind, secret_hash, max_in_flight, uses_left, expires_at, created_at)
                             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                            row.name,
                            kind,
                            row.secret_hash,
                            row.max_in_flight,
                            row.uses_left,
                            row.expires_at,
                            now
                        ))
                        .await?
                        .rows_affected())
                }
                .boxed()
            })
            .await?;
        match added {
            1 => Ok(()),
            _ => Err(StoreError::Conflict(format!(
                "name: a credential named {name} exists already (revoked ones keep their name)"
            ))),
        }
    }

    /// Mints worker credential `name` through enrollment credential `by` (one of its uses, before
    /// it expires): both statements or neither. The minted credential's cap is the enrollment's.
    pub async fn enroll(
        &self,
        by: &str,
        name: &str,
        secret_hash: Vec<u8>,
        now: i64,
    ) -> Result<Credential> {
        let (by, name) = (by.to_string(), name.to_string());
        self.writer
            .run_many(move |c| {
                async move {
                    let used = sqlx::query!(
                        r#"UPDATE credentials SET uses_left = uses_left - 1
                           WHERE name = ? AND kind = 'enrollment' AND revoked_at IS NULL AND uses_left > 0 AND expires_at > ?
                           RETURNING max_in_flight"#,
                        by,
                        now
                    )
                    .fetch_optional(&mut *c)
                    .await?;
                    let Some(used) = used else {
                        return Err(StoreError::Forbidden(format!(
                            "enrollment credential {by} is used up, expired or revoked: ask the admin for another"
                        )));
                    };
                    let added = sqlx::query!(
                        "INSERT INTO credentials (name, kind, secret_hash, max_in_flight, enrolled_by, created_at)
                         VALUES (?, 'worker', ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                        name,
                        secret_hash,
                        used.max_in_flight,
                        by,
                        now
                    )
                    .execute(&mut *c)
                    .await?;
                    if added.rows_affected() != 1 {
                        // The use is given back with the savepoint.
                        return Err(StoreError::Conflict(format!(
                            "name: a credential named {name} exists already; enroll under another name"
                        )));
                    }
                    Ok(Credential {
                        name,
                        kind: CredentialKind::Worker,
                        max_in_flight: used.max_in_flight,
                    })
                }
                .boxed()
            })
            .await
    }

    /// Every credential, newest first, with the jobs each holds now.
    pub async fn list_credentials(&self) -> Result<Vec<CredentialRow>> {
        let rows = sqlx::query!(
            r#"SELECT c.name AS "name!", c.kind AS "kind!", c.max_in_flight, c.uses_left, c.expires_at, c.enrolled_by,
                      c.created_at AS "created_at!", c.revoked_at,
                      (SELECT count(*) FROM jobs j WHERE j.credential = c.name AND j.status = 'running')
                      + (SELECT count(*) FROM gang_members m WHERE m.credential = c.name AND m.lease_expires_at IS NOT NULL
                           AND m.node_rank > 0) AS "running!: i64"
               FROM credentials c ORDER BY c.created_at DESC, c.name"#
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CredentialRow {
                    name: r.name,
                    kind: kind_of(&r.kind)?,
                    max_in_flight: r.max_in_flight,
                    uses_left: r.uses_left,
                    expires_at: r.expires_at,
                    enrolled_by: r.enrolled_by,
                    created_at: r.created_at,
                    revoked_at: r.revoked_at,
                    running: r.running,
                })
            })
            .collect()
    }

    /// Revokes credential `name` and gives back every job it holds (as node 0 or as any live
    /// member of a gang): pending again without charging an attempt (cancelled or pruned if that
    /// was requested). A repeated revoke changes nothing; an unknown name is a 404.
    pub async fn revoke(&self, name: &str, now: i64) -> Result<Vec<JobChange>> {
        let name = name.to_string();
        let ranks = self.ranks.clone();
        let rows = self
            .writer
            .run_many(move |c| {
                async move {
                    let known = sqlx::query_scalar!(
                        r#"UPDATE credentials SET revoked_at = coalesce(revoked_at, ?2) WHERE name = ?1 RETURNING name AS "name!""#,
                        name,
                        now
                    )
                    .fetch_optional(&mut *c)
                    .await?;
                    if known.is_none() {
                        return Err(StoreError::NotFound(format!("worker credential {name}")));
                    }
                    let rows = sqlx::query!(
                        r#"UPDATE jobs SET
                             status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                                           WHEN stop_requested = 1 THEN 'pruned'
                                           ELSE 'pending' END,
                             max_attempts = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN max_attempts
                                                 ELSE max_attempts + 1 END,
                             finished_at = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN ?2 ELSE finished_at END,
                             worker = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN worker END,
                             lease_expires_at = NULL,
                             attempt_ended_at = ?2, attempt_outcome = 'released',
                             attempt_error = 'its worker credential ' || ?1 || ' was revoked'
                           WHERE status = 'running'
                             AND (credential = ?1 OR id IN (SELECT m.job_id FROM gang_members m INDEXED BY gang_members_live_by_credential
                                                            WHERE m.credential = ?1 AND m.lease_expires_at IS NOT NULL
                                                              AND m.attempt = jobs.attempt))
                           RETURNING id AS "id!", sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
                        name,
                        now
                    )
                    .fetch_all(&mut *c)
                    .await?;
                    for r in &rows {
                        super::lease::attempt_ended(&ranks, r.sweep_id, r.id, status_of(&r.status)?);
                    }
                    Ok(rows)
                }
                .boxed()
            })
            .await?;
        self.ended(
            rows.into_iter()
                .map(|r| (r.id, r.sweep_id, r.status, r.attempt)),
        )
        .await
    }
}
