//! Population-based training's state transitions (the rules are `sweep/pbt.rs`): a member's
//! report decided in the transaction that stores it, a pinned checkpoint's arrival, an exploit's
//! copy done. The members are kept in memory beside SQLite as early stopping's values are
//! ([`super::ranks`]: loaded on a sweep's first report after a start, changed inside the writer's
//! batches, dropped when a write or batch is rolled back), so a decision never reads the population
//! (10,000 members: docs/benchmarks.md).
//!
//! An exploit ends the member's attempt as a release does (pending, no attempt spent; the old
//! worker's next write gets 409 and its program is stopped), with the donor's explored params, the
//! job's epoch set back (or forward) to the donor's point, a segment row, and the member's epochs
//! past that point moved to `metrics_archive` under the new segment, so its reports of those epochs
//! never overwrite them. The copy of the donor's pinned checkpoint into the member's slot is file work
//! done after the commit (`checkpoints.rs`); `pbt_members.copy_from` says it is owed until done.
use std::collections::HashMap;

use super::ranks::{Population, Ranks, SweepRanks};
use super::*;
use crate::sweep::pbt::{Decision, Member, Stored};

/// What a PBT report did to its member, for the caller's work after the commit.
#[derive(Debug, Clone)]
pub enum PbtOutcome {
    /// Not due, or scored and going on.
    Continued,
    /// Exploited `donor`'s checkpoint of `epoch`: the attempt ended (`change`), the copy is owed.
    Exploited {
        change: JobChange,
        donor: i64,
        epoch: i64,
    },
}

/// The rules that judge a job's reports: early stopping's, or PBT's (never both).
#[derive(Debug, Clone)]
pub enum Judges {
    None,
    Stop(crate::sweep::early_stop::EarlyStop),
    Pbt(Box<Stored>),
}

impl Store {
    /// What judges `job`'s reports (None also for no such job: the metrics write then says why).
    pub async fn judges_of_job(&self, job: i64) -> Result<Judges> {
        let row = sqlx::query!(
            "SELECT s.early_stop, s.pbt FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?",
            job
        )
        .fetch_optional(&self.worker_read)
        .await?;
        let Some(row) = row else {
            return Ok(Judges::None);
        };
        let corrupt = |e: String| StoreError::Corrupt(format!("sweep of job {job}: {e}"));
        let corrupt_json = |e: serde_json::Error| corrupt(e.to_string());
        if let Some(text) = row.early_stop {
            let rule = crate::sweep::early_stop::EarlyStop::from_stored(&text)
                .map_err(|e| corrupt(e.to_string()))?;
            return Ok(Judges::Stop(rule));
        }
        match row.pbt {
            Some(text) => Ok(Judges::Pbt(Box::new(
                serde_json::from_str(&text).map_err(corrupt_json)?,
            ))),
            None => Ok(Judges::None),
        }
    }

    /// Stores one epoch's metrics and decides the member's PBT step on them, in one transaction.
    /// `value` is the rules' metric in `m`. Returns the sweep and what the decision did.
    pub async fn record_and_decide(
        &self,
        job: i64,
        m: &MetricsReport,
        now: i64,
        value: f64,
        stored: Stored,
    ) -> Result<(i64, PbtOutcome)> {
        let report = m.clone();
        let ranks = self.ranks.clone();
        let done = self
            .writer
            .run_many(move |c| {
                async move {
                    let Some(sweep) =
                        super::lease::insert_metrics(One::within(&mut *c), job, &report, now)
                            .await?
                    else {
                        return Ok(None);
                    };
                    let step = Step {
                        job,
                        sweep,
                        epoch: report.epoch,
                        value,
                        now,
                    };
                    let outcome = decide_in(c, &ranks, step, &stored).await?;
                    Ok(Some((sweep, outcome)))
                }
                .boxed()
            })
            .await?;
        match done {
            Some(done) => Ok(done),
            None => Ok((
                self.metrics_not_stored(job, m).await?,
                PbtOutcome::Continued,
            )),
        }
    }

    /// Whether `job`'s checkpoint of `epoch`, just stored, is one to pin (the member was in the
    /// top at that point and its pin has not arrived).
    pub async fn pin_wanted(&self, job: i64, epoch: i64) -> Result<bool> {
        let wanted = sqlx::query_scalar!(
            "SELECT 1 AS one FROM pbt_members
             WHERE job_id = ? AND pinned = 1 AND pin_ready = 0 AND perturbed_at = ?",
            job,
            epoch
        )
        .fetch_optional(&self.worker_read)
        .await?;
        Ok(wanted.is_some())
    }

    /// `job`'s checkpoint of `epoch` is kept as its pin: it may be copied from now on.
    pub async fn pin_arrived(&self, job: i64, epoch: i64) -> Result<()> {
        let ranks = self.ranks.clone();
        self.writer
            .run_many(move |c| {
                async move {
                    let sweep = sqlx::query_scalar!(
                        "UPDATE pbt_members SET pin_ready = 1
                         WHERE job_id = ? AND pinned = 1 AND perturbed_at = ? RETURNING sweep_id",
                        job,
                        epoch
                    )
                    .fetch_optional(&mut *c)
                    .await?;
                    if let Some(sweep) = sweep {
                        ranks.with(sweep, |s| {
                            if let SweepRanks::Pbt(p) = s {
                                p.pin_arrived(job, epoch);
                            }
                        });
                    }
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    /// The copy `job` is owed, if any: (donor, epoch of the donor's pin).
    pub async fn copy_owed(&self, job: i64) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query!(
            r#"SELECT copy_from AS "from!", copy_epoch AS "epoch!" FROM pbt_members
               WHERE job_id = ? AND copy_from IS NOT NULL"#,
            job
        )
        .fetch_optional(&self.worker_read)
        .await?;
        Ok(row.map(|r| (r.from, r.epoch)))
    }

    /// Every member owed a copy (at start-up), or those owed one from `donor`.
    pub async fn copies_owed(&self, donor: Option<i64>) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar!(
            r#"SELECT job_id AS "job_id!" FROM pbt_members
               WHERE copy_from IS NOT NULL AND (?1 IS NULL OR copy_from = ?1)"#,
            donor
        )
        .fetch_all(&self.worker_read)
        .await?)
    }

    /// The copy `job` was owed from `donor`'s pin of `epoch` is done.
    pub async fn copy_done(&self, job: i64, donor: i64, epoch: i64) -> Result<()> {
        self.writer
            .run(move |one| {
                async move {
                    one.execute(sqlx::query!(
                        "UPDATE pbt_members SET copy_from = NULL, copy_epoch = NULL
                         WHERE job_id = ? AND copy_from = ? AND copy_epoch = ?",
                        job,
                        donor,
                        epoch
                    ))
                    .await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    /// The pins of `job` something may still copy: its own current one (if it has arrived or is
    /// awaited) and those owed to members.
    pub async fn pins_in_use(&self, job: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar!(
            r#"SELECT perturbed_at AS "epoch!" FROM pbt_members WHERE job_id = ?1 AND pinned = 1
               UNION SELECT copy_epoch AS "epoch!" FROM pbt_members WHERE copy_from = ?1"#,
            job
        )
        .fetch_all(&self.worker_read)
        .await?)
    }
}

/// One report to decide on.
#[derive(Debug, Clone, Copy)]
struct Step {
    job: i64,
    sweep: i64,
    epoch: i64,
    value: f64,
    now: i64,
}

/// The member's decision inside the report's transaction, and what it writes.
async fn decide_in(
    c: &mut SqliteConnection,
    ranks: &Ranks,
    r: Step,
    stored: &Stored,
) -> Result<PbtOutcome> {
    if !ranks.is_loaded(r.sweep) {
        load(c, ranks, r.sweep).await?;
    }
    let decided = ranks
        .with(r.sweep, |s| match s {
            SweepRanks::Pbt(p) => p.decide(r.job, r.epoch, r.value, stored),
            _ => None,
        })
        .flatten();
    let Some(d) = decided else {
        return Ok(PbtOutcome::Continued);
    };
    let pinned = d.pinned && !at_last_epoch(c, r).await?;
    let next = d.number + 1;
    sqlx::query!(
        "UPDATE sweeps SET pbt_decisions = ? WHERE id = ?",
        next,
        r.sweep
    )
    .execute(&mut *c)
    .await?;
    let (score, at) = (d.member.score, d.member.perturbed_at);
    sqlx::query!(
        "UPDATE pbt_members SET score = ?, perturbed_at = ?, pinned = ?, pin_ready = 0 WHERE job_id = ?",
        score,
        at,
        pinned,
        r.job
    )
    .execute(&mut *c)
    .await?;
    match d.decision {
        Decision::Exploit {
            donor,
            epoch,
            params,
        } => exploit(c, r, donor, epoch, params).await,
        _ => Ok(PbtOutcome::Continued),
    }
}

/// Whether the report is of the member's last epoch: a checkpoint there is never pinned (ours, not
/// Ray's: a member that copied it would have nothing left to train and end as the donor's copy).
async fn at_last_epoch(c: &mut SqliteConnection, r: Step) -> Result<bool> {
    let epochs = sqlx::query_scalar!("SELECT epochs FROM jobs WHERE id = ?", r.job)
        .fetch_one(&mut *c)
        .await?;
    Ok(r.epoch >= epochs)
}

/// The member takes `donor`'s pin of `epoch` and `params`: its attempt ends as a release does, its
/// epochs past `epoch` are archived under the new segment, which begins.
async fn exploit(
    c: &mut SqliteConnection,
    r: Step,
    donor: i64,
    epoch: i64,
    params: Map<String, Value>,
) -> Result<PbtOutcome> {
    let job = r.job;
    let segment = sqlx::query_scalar!(
        r#"SELECT coalesce(max(segment), 0) + 1 AS "n!: i64" FROM pbt_segments WHERE job_id = ?"#,
        job
    )
    .fetch_one(&mut *c)
    .await?;
    // Filed under the segment that replaces them (an older segment's epochs too, when the jump
    // goes back past where the last one began).
    sqlx::query!(
        "INSERT INTO metrics_archive (job_id, segment, epoch, attempt, lr, train_loss, test_loss, accuracy,
                                      precision, recall, f1, images_per_sec, seconds, recorded_at, extra)
         SELECT m.job_id, ?3, m.epoch, m.attempt, m.lr, m.train_loss, m.test_loss, m.accuracy, m.precision,
                m.recall, m.f1, m.images_per_sec, m.seconds, m.recorded_at, m.extra
         FROM metrics m WHERE m.job_id = ?1 AND m.epoch > ?2",
        job,
        epoch,
        segment
    )
    .execute(&mut *c)
    .await?;
    sqlx::query!(
        "DELETE FROM metrics WHERE job_id = ? AND epoch > ?",
        job,
        epoch
    )
    .execute(&mut *c)
    .await?;
    // Segment 0 is the member's initial draw (its own donor, from epoch 0), kept before the
    // first exploit overwrites the job's params: a replay of its lineage starts there.
    sqlx::query!(
        "INSERT INTO pbt_segments (job_id, segment, from_epoch, at_epoch, donor, params, decided_at)
         SELECT id, 0, 0, 0, id, params, created_at FROM jobs WHERE id = ?
         ON CONFLICT (job_id, segment) DO NOTHING",
        job
    )
    .execute(&mut *c)
    .await?;
    let params = Value::Object(params).to_string();
    sqlx::query!(
        "INSERT INTO pbt_segments (job_id, segment, from_epoch, at_epoch, donor, params, decided_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        job,
        segment,
        epoch,
        r.epoch,
        donor,
        params,
        r.now
    )
    .execute(&mut *c)
    .await?;
    let why =
        format!("exploited job {donor}'s checkpoint of epoch {epoch} (population-based training)");
    let row = sqlx::query!(
        r#"UPDATE jobs SET
             status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'pending' END,
             max_attempts = max_attempts + (cancel_requested = 0),
             finished_at = CASE WHEN cancel_requested = 1 THEN ?3 ELSE finished_at END,
             worker = NULL, lease_expires_at = NULL, params = ?4, epoch = ?5,
             attempt_ended_at = ?3, attempt_outcome = 'released', attempt_error = ?6
           WHERE id = ?1 AND status = 'running'
           RETURNING sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
        job,
        r.sweep,
        r.now,
        params,
        epoch,
        why
    )
    .fetch_one(&mut *c)
    .await?;
    sqlx::query!(
        "UPDATE pbt_members SET copy_from = ?, copy_epoch = ? WHERE job_id = ?",
        donor,
        epoch,
        job
    )
    .execute(&mut *c)
    .await?;
    let change = change_of(job, row.sweep_id, &row.status, row.attempt)?;
    Ok(PbtOutcome::Exploited {
        change,
        donor,
        epoch,
    })
}

/// A sweep's population from SQLite: its members in job order, their state and params.
async fn load(c: &mut SqliteConnection, ranks: &Ranks, sweep: i64) -> Result<()> {
    let rows = sqlx::query!(
        r#"SELECT m.job_id AS "job_id!", m.score, m.perturbed_at, m.pinned AND m.pin_ready AS "usable!: bool",
                  j.status, j.params
           FROM pbt_members m JOIN jobs j ON j.id = m.job_id
           WHERE m.sweep_id = ? ORDER BY m.job_id"#,
        sweep
    )
    .fetch_all(&mut *c)
    .await?;
    let decisions = sqlx::query_scalar!("SELECT pbt_decisions FROM sweeps WHERE id = ?", sweep)
        .fetch_one(&mut *c)
        .await?;
    let mut members = Vec::with_capacity(rows.len());
    let mut params = Vec::with_capacity(rows.len());
    for row in rows {
        members.push(Member {
            job: row.job_id,
            score: row.score,
            perturbed_at: row.perturbed_at,
            pinned: row.usable,
            finished: status_of(&row.status)?.is_final(),
        });
        params.push(parse_json("jobs.params", &row.params)?);
    }
    let population = Population::new(members, params, decisions);
    ranks.load(sweep, SweepRanks::Pbt(Box::new(population)));
    Ok(())
}

/// What a PBT sweep's schedule export reads: its best completed member (by the rules' metric at
/// its last epoch) and every member's segments (segment 0 included).
#[derive(Debug)]
pub struct LineageInputs {
    pub stored: Stored,
    /// None before a member completes.
    pub best: Option<BestMember>,
    pub segments: HashMap<i64, Vec<crate::sweep::pbt::Segment>>,
}

/// A PBT sweep's best completed member.
#[derive(Debug)]
pub struct BestMember {
    pub job: i64,
    /// The rules' metric at its last epoch (None when it reported none).
    pub value: Option<f64>,
    pub last_epoch: i64,
    pub params: Map<String, Value>,
}

impl Store {
    /// A sweep's PBT rules as stored beside it (None for another sweep; 404 for no such sweep):
    /// what every PBT read starts from.
    pub async fn pbt_rules(&self, sweep: i64) -> Result<Option<Stored>> {
        let text = sqlx::query_scalar!("SELECT pbt FROM sweeps WHERE id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        text.map(|t| parse_json("sweeps.pbt", &t)).transpose()
    }

    /// None when the sweep is not a PBT sweep.
    pub async fn pbt_lineage_inputs(&self, sweep: i64) -> Result<Option<LineageInputs>> {
        let Some(stored) = self.pbt_rules(sweep).await? else {
            return Ok(None);
        };
        let best = self.best_member(sweep, &stored).await?;
        let rows = sqlx::query!(
            r#"SELECT j.id AS "job!", coalesce(s.from_epoch, 0) AS "from_epoch!: i64",
                      coalesce(s.donor, j.id) AS "donor!: i64", coalesce(s.params, j.params) AS "params!: String",
                      coalesce(s.decided_at, j.created_at) AS "decided_at!: i64"
               FROM jobs j LEFT JOIN pbt_segments s ON s.job_id = j.id
               WHERE j.sweep_id = ? ORDER BY j.id, s.segment"#,
            sweep
        )
        .fetch_all(&self.read)
        .await?;
        let mut segments: HashMap<i64, Vec<crate::sweep::pbt::Segment>> = HashMap::new();
        for r in rows {
            segments
                .entry(r.job)
                .or_default()
                .push(crate::sweep::pbt::Segment {
                    from_epoch: r.from_epoch,
                    donor: r.donor,
                    params: parse_json("pbt_segments.params", &r.params)?,
                    decided_at: r.decided_at,
                });
        }
        Ok(Some(LineageInputs {
            stored,
            best,
            segments,
        }))
    }

    /// The completed member with the best value of the rules' metric at its last epoch.
    async fn best_member(&self, sweep: i64, stored: &Stored) -> Result<Option<BestMember>> {
        let metric = stored.metric.as_str();
        let max = stored.rules.mode == crate::sweep::early_stop::Mode::Max;
        let rows = sqlx::query!(
            r#"SELECT j.id AS "id!", j.epoch, j.params,
                      CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                              WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                              WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                              WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                              ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS "v: f64"
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND j.status = 'completed'"#,
            sweep,
            metric
        )
        .fetch_all(&self.read)
        .await?;
        let better = |a: f64, b: f64| if max { a > b } else { a < b };
        let mut best: Option<(i64, Option<f64>, i64, String)> = None;
        for r in rows {
            let v = r.v.filter(|v| v.is_finite());
            let replace = match (&best, v) {
                (None, _) => true,
                (Some((_, None, _, _)), Some(_)) => true,
                (Some((_, Some(b), _, _)), Some(v)) => better(v, *b),
                _ => false,
            };
            if replace {
                best = Some((r.id, v, r.epoch, r.params));
            }
        }
        best.map(|(job, value, last_epoch, params)| {
            Ok(BestMember {
                job,
                value,
                last_epoch,
                params: parse_json("jobs.params", &params)?,
            })
        })
        .transpose()
    }
}

impl Store {
    /// The population view: the first `limit` members by job id, each with `metric` (by default the
    /// rules') by epoch and
    /// its segments (segment 0 from the job's params when it never exploited). None when the sweep
    /// is not a PBT sweep.
    pub async fn pbt_population(
        &self,
        sweep: i64,
        metric: Option<&str>,
        limit: i64,
    ) -> Result<Option<protocol::views::PopulationView>> {
        use protocol::views::{PopulationMember, PopulationSegment, PopulationView};
        let Some(stored) = self.pbt_rules(sweep).await? else {
            return Ok(None);
        };
        // The rules' metric unless another is asked for.
        let metric = metric.unwrap_or(&stored.metric).to_string();
        let metric = metric.as_str();
        let keys: Vec<&String> = stored.rules.space.iter().map(|(k, _)| k).collect();
        let space = |p: Map<String, Value>| -> Map<String, Value> {
            p.into_iter().filter(|(k, _)| keys.contains(&k)).collect()
        };
        let total = sqlx::query_scalar!("SELECT count(*) FROM jobs WHERE sweep_id = ?", sweep)
            .fetch_one(&self.read)
            .await?;
        let jobs = sqlx::query!(
            r#"SELECT id AS "id!", status, params, created_at FROM jobs WHERE sweep_id = ? ORDER BY id LIMIT ?"#,
            sweep,
            limit
        )
        .fetch_all(&self.read)
        .await?;
        let mut members = Vec::with_capacity(jobs.len());
        for j in jobs {
            let points = sqlx::query!(
                r#"SELECT epoch, CASE ?2 WHEN 'accuracy' THEN accuracy WHEN 'test_loss' THEN test_loss
                              WHEN 'train_loss' THEN train_loss WHEN 'precision' THEN precision
                              WHEN 'recall' THEN recall WHEN 'f1' THEN f1 WHEN 'lr' THEN lr
                              WHEN 'images_per_sec' THEN images_per_sec WHEN 'seconds' THEN seconds
                              ELSE json_extract(extra, '$."' || ?2 || '"') END AS "v: f64"
                   FROM metrics WHERE job_id = ?1 ORDER BY epoch"#,
                j.id,
                metric
            )
            .fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| (r.epoch, r.v))
            .collect();
            let mut segments = sqlx::query!(
                "SELECT from_epoch, at_epoch, donor, params FROM pbt_segments WHERE job_id = ? ORDER BY segment",
                j.id
            )
            .fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| {
                Ok(PopulationSegment {
                    from_epoch: r.from_epoch,
                    at_epoch: r.at_epoch,
                    donor: r.donor,
                    params: space(parse_json("pbt_segments.params", &r.params)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
            if segments.is_empty() {
                segments.push(PopulationSegment {
                    from_epoch: 0,
                    at_epoch: 0,
                    donor: j.id,
                    params: space(parse_json("jobs.params", &j.params)?),
                });
            }
            members.push(PopulationMember {
                job_id: j.id,
                status: status_of(&j.status)?,
                points,
                segments,
            });
        }
        Ok(Some(PopulationView {
            metric: metric.to_string(),
            total,
            members,
        }))
    }
}

/// A member's segment as the exports list it: (job, segment, from epoch, donor, its values).
pub type ScheduleRow = (i64, i64, i64, i64, Map<String, Value>);

impl Store {
    /// A PBT sweep's space keys and every stored segment of its members (segment 0, the initial
    /// values, is stored with a member's first exploit), by job then segment. None for another
    /// sweep.
    pub async fn pbt_schedule_rows(
        &self,
        sweep: i64,
    ) -> Result<Option<(Vec<String>, Vec<ScheduleRow>)>> {
        let Some(stored) = self.pbt_rules(sweep).await? else {
            return Ok(None);
        };
        let keys: Vec<String> = stored.rules.space.iter().map(|(k, _)| k.clone()).collect();
        let rows = sqlx::query!(
            "SELECT s.job_id, s.segment, s.from_epoch, s.donor, s.params
             FROM pbt_segments s JOIN jobs j ON j.id = s.job_id
             WHERE j.sweep_id = ? ORDER BY s.job_id, s.segment",
            sweep
        )
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| {
            let params: Map<String, Value> = parse_json("pbt_segments.params", &r.params)?;
            Ok((r.job_id, r.segment, r.from_epoch, r.donor, params))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some((keys, rows)))
    }
}
