//! A trial drawn when a claim reaches it (TPE and NSGA-II searches): the sweep's history read,
//! the model run on a blocking thread, the point written into the trial's placeholder. One draw at
//! a time per sweep, so each sees every point drawn before it (constant liar), and other sweeps'
//! claims never wait on it.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use protocol::{JobChange, JobStatus};

use crate::events::Event;
use crate::state::AppState;
use crate::store::{Result, Store, StoreError, StoredTrial};
use crate::sweep::nsga2::{Member, Nsga2};
use crate::sweep::objectives::total_violation;
use crate::sweep::search::{Sampler, Search};
use crate::sweep::tpe::{Outcome, Trial};

/// One lock per drawn sweep, guarding its [`KnownPoints`].
#[derive(Debug, Default)]
pub struct DrawLocks(std::sync::Mutex<HashMap<i64, Arc<tokio::sync::Mutex<KnownPoints>>>>);

impl DrawLocks {
    fn of(&self, sweep: i64) -> Arc<tokio::sync::Mutex<KnownPoints>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(sweep).or_default().clone()
    }
}

/// The points of a sweep's history in the model's terms, by (sweep, trial number): a drawn point
/// never changes, so each is read and converted once (None: a warm-start trial outside the
/// space). Only outcomes are read again at each draw.
#[derive(Debug, Default)]
pub struct KnownPoints(HashMap<(i64, i64), Option<Vec<f64>>>);

impl KnownPoints {
    fn numbers_of(&self, sweep: i64) -> Vec<i64> {
        self.0
            .keys()
            .filter(|k| k.0 == sweep)
            .map(|k| k.1)
            .collect()
    }
}

/// One trial of the history with its point.
struct Known {
    x: Vec<f64>,
    trial: StoredTrial,
}

/// Draws the next trial of sweep `sweep` from its history now, and writes it into its
/// placeholder. The model runs on a blocking thread and holds no database lock: other claims go
/// on meanwhile. Does nothing when no placeholder is left (another claim drew the last).
pub async fn draw(state: &AppState, sweep: i64) -> Result<()> {
    let lock = state.draws.of(sweep);
    let mut known = lock.lock().await;
    let Some((job, number)) = state.store.next_undrawn(sweep).await? else {
        return Ok(());
    };
    let spec = state.store.sweep_spec(sweep).await?;
    let Some((search, sampler)) = spec.search.as_ref().and_then(|s| Some((s, s.sampler()?))) else {
        return Err(StoreError::Corrupt(format!(
            "sweep {sweep} has undrawn trials but no model to draw them"
        )));
    };
    let history = read_history(state, search, sweep, &sampler, &mut known).await?;
    let (x, generation) = match sampler.clone() {
        Sampler::Tpe(tpe) => {
            let trials = tpe_trials(search, history);
            let x = blocking(move || tpe.suggest(&trials, number)).await?;
            (x, None)
        }
        Sampler::Nsga2(nsga2) => {
            let (x, g) = breed(state, sweep, search, nsga2, history, number).await?;
            (x, Some(g))
        }
    };
    let mut params = spec.train.clone();
    params.extend(sampler.to_params(&x));
    let shape = Store::shape_of(&spec, &params);
    let now = state.clock.now_ms();
    if state
        .store
        .write_drawn(job, &params, shape, generation, now)
        .await?
    {
        state.telemetry.trials_drawn.inc();
        state.publish(Event::Job(JobChange {
            job_id: job,
            sweep_id: sweep,
            status: JobStatus::Pending,
            attempt: 0,
        }));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Corrupt(format!("the sampler stopped: {e}")))
}

/// The history a draw learns from: warm-start trials first (older), then the sweep's own, each
/// with its point (read and converted once, then kept in `known`).
async fn read_history(
    state: &AppState,
    search: &Search,
    sweep: i64,
    sampler: &Sampler,
    known: &mut KnownPoints,
) -> Result<Vec<Known>> {
    let metrics = search.judged_metrics();
    let mut out = vec![];
    for &source in search.warm_start.iter().chain([&sweep]) {
        let rows = state
            .store
            .trial_history(source, &metrics, source != sweep, &known.numbers_of(source))
            .await?;
        for t in rows {
            if let Some(params) = &t.params {
                known.0.insert((source, t.idx), sampler.to_internal(params));
            }
            if let Some(Some(x)) = known.0.get(&(source, t.idx)) {
                out.push(Known {
                    x: x.clone(),
                    trial: t,
                });
            }
        }
    }
    Ok(out)
}

/// The history as TPE ranks it: a completed trial without every objective is left out (nothing
/// to learn from, as a failed one); a pruned one ranks by the first objective.
fn tpe_trials(search: &Search, history: Vec<Known>) -> Vec<Trial> {
    let k = search.objectives.len();
    history
        .into_iter()
        .filter_map(|Known { x, trial }| {
            let objectives = &trial.values[..k];
            let outcome = match trial.status {
                JobStatus::Completed => {
                    Outcome::Complete(objectives.iter().copied().collect::<Option<_>>()?)
                }
                JobStatus::Pruned => Outcome::Pruned(objectives[0].map(|v| (trial.epoch, v))),
                JobStatus::Diverged => Outcome::Diverged,
                _ => Outcome::Running,
            };
            let violation = match outcome {
                Outcome::Complete(_) | Outcome::Pruned(_) if !search.constraints.is_empty() => {
                    total_violation(&search.constraints, &trial.values[k..])
                }
                _ => 0.0,
            };
            Some(Trial {
                x,
                outcome,
                violation,
            })
        })
        .collect()
}

/// NSGA-II's draw: the completed trials (with every objective) as members, the new trial's
/// generation, that generation's parents (chosen now if first needed, and kept), the child.
async fn breed(
    state: &AppState,
    sweep: i64,
    search: &Search,
    nsga2: Nsga2,
    history: Vec<Known>,
    number: i64,
) -> Result<(Vec<f64>, i64)> {
    let k = search.objectives.len();
    let constrained = !search.constraints.is_empty();
    let members: Vec<Member> = history
        .into_iter()
        .filter(|h| h.trial.status == JobStatus::Completed)
        .filter_map(|Known { x, trial }| {
            Some(Member {
                number: trial.job,
                generation: trial.generation.unwrap_or(0),
                values: trial.values[..k].iter().copied().collect::<Option<_>>()?,
                violation: constrained
                    .then(|| total_violation(&search.constraints, &trial.values[k..])),
                x,
            })
        })
        .collect();
    let mut chosen: BTreeMap<i64, Vec<i64>> = state.store.nsga2_parents(sweep).await?;
    let before: Vec<i64> = chosen.keys().copied().collect();
    let ((x, generation), chosen) = blocking(move || {
        let drawn = nsga2.draw(&members, &mut chosen, number);
        (drawn, chosen)
    })
    .await?;
    // Parents chosen by this draw are kept before its point is written.
    for (g, p) in chosen.iter().filter(|(g, _)| !before.contains(g)) {
        state.store.keep_nsga2_parents(sweep, *g, p).await?;
    }
    Ok((x, generation))
}
