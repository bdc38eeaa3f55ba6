//! Random search: `[search] method = "random"` draws `trials` points from the distributions of
//! `[search.space]`, as Optuna's RandomSampler or W&B's `random` method do. The draws come from
//! ChaCha8 seeded with `search.seed`, one stream for the whole sweep, keys in the order written: the
//! same spec gives the same trials on every machine and version. Every drawn value passes the same
//! check a `[train]` value does, so a trial is never a job the trainer would refuse.
//!
//! ```toml
//! [search]
//! method = "random"
//! trials = 40
//! seed = 0
//! [search.space]
//! lr = { log_uniform = [1e-4, 1e-1] }
//! batch_size = { choice = [16, 32, 64, 128] }
//! momentum = { uniform = [0.8, 0.99] }
//! warmup_epochs = { int = [0, 5] }
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::early_stop::Mode;
use super::file::{SearchFile, SearchMethod};
use super::objectives::{self, Constraint, Objective};
use super::{check_value, err, nsga2, tpe, Keys, SpecError, MAX_JOBS, MAX_SEED};

/// Where one option's values come from; in a file `{ log_uniform = [lo, hi] }` and so on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// exp(U(ln lo, ln hi)), for scales such as learning rates (0 < lo < hi).
    LogUniform(f64, f64),
    /// U(lo, hi) (lo < hi).
    Uniform(f64, f64),
    /// An integer in lo..=hi, each equally likely.
    Int(i64, i64),
    /// One of the listed values, each equally likely.
    Choice(Vec<Value>),
}

impl Distribution {
    /// `v` in the model's terms: a number as it is, a choice by its index; None when `v` is not a
    /// value this distribution could draw.
    pub fn internal(&self, v: &Value) -> Option<f64> {
        match self {
            Distribution::Choice(values) => values
                .iter()
                .position(|c| super::same_value(c, v))
                .map(|i| i as f64),
            Distribution::Int(lo, hi) => v
                .as_i64()
                .filter(|x| (*lo..=*hi).contains(x))
                .map(|x| x as f64),
            Distribution::Uniform(lo, hi) | Distribution::LogUniform(lo, hi) => {
                v.as_f64().filter(|x| (*lo..=*hi).contains(x))
            }
        }
    }
}

/// The most sweeps a model's `warm_start` names.
pub const MAX_WARM_START: usize = 16;

/// A validated `[search]`: random (every trial drawn at submit) or a model (`model` set: each
/// trial drawn when claimed, by TPE or NSGA-II).
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub trials: i64,
    pub seed: i64,
    /// In the order written: the order of draws.
    pub space: Vec<(String, Distribution)>,
    /// What trials are judged by, in order: none for a random search that names no metric.
    pub objectives: Vec<(String, Mode)>,
    pub constraints: Vec<Constraint>,
    pub model: Option<Model>,
    /// A model's: sweeps whose finished trials are history (same space keys).
    pub warm_start: Vec<i64>,
    /// A model's: points evaluated first, in order; each a full assignment of the space.
    pub enqueue: Vec<Map<String, Value>>,
    /// Population-based training: the `population` (`trials`) drawn at submit, then changed while
    /// they train (`sweep/pbt.rs`).
    pub pbt: Option<super::pbt::Options>,
}

/// The model that draws a search's trials when they are claimed.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    Tpe(tpe::Options),
    Nsga2(nsga2::Options),
}

/// A model over one search's space, ready to draw.
#[derive(Debug, Clone)]
pub enum Sampler {
    Tpe(tpe::Tpe),
    Nsga2(nsga2::Nsga2),
}

impl Sampler {
    fn space(&self) -> &[(String, Distribution)] {
        match self {
            Sampler::Tpe(t) => &t.space,
            Sampler::Nsga2(n) => &n.space,
        }
    }

    /// A trial's parameters in the model's terms (None: a warm-start trial outside the space).
    pub fn to_internal(&self, params: &Map<String, Value>) -> Option<Vec<f64>> {
        to_internal(self.space(), params)
    }

    /// The model's values as the trial's parameters.
    pub fn to_params(&self, x: &[f64]) -> Map<String, Value> {
        to_params(self.space(), x)
    }
}

/// A trial's parameters in a model's terms: numbers as they are, a choice by its index. None when
/// a value is missing or outside the space (a warm-start trial that cannot be read).
pub fn to_internal(
    space: &[(String, Distribution)],
    params: &Map<String, Value>,
) -> Option<Vec<f64>> {
    space
        .iter()
        .map(|(k, d)| d.internal(params.get(k)?))
        .collect()
}

/// A model's values as a trial's parameters.
pub fn to_params(space: &[(String, Distribution)], x: &[f64]) -> Map<String, Value> {
    space
        .iter()
        .zip(x)
        .map(|((k, d), &v)| {
            let value = match d {
                Distribution::Choice(values) => values[v as usize].clone(),
                Distribution::Int(lo, hi) => Value::from((v as i64).clamp(*lo, *hi)),
                Distribution::Uniform(lo, hi) | Distribution::LogUniform(lo, hi) => {
                    Value::from(v.clamp(*lo, *hi))
                }
            };
            (k.clone(), value)
        })
        .collect()
}

impl Search {
    /// The trials known at submit, `train` with one value per key of the space: all of a random
    /// search's, drawn now; a TPE search's enqueued points (the rest are drawn when claimed).
    pub fn sample(&self, train: &Map<String, Value>) -> Vec<Map<String, Value>> {
        if self.model.is_some() {
            return self
                .enqueue
                .iter()
                .map(|p| {
                    let mut point = train.clone();
                    point.extend(p.clone());
                    point
                })
                .collect();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed as u64);
        (0..self.trials)
            .map(|_| {
                let mut point = train.clone();
                for (key, d) in &self.space {
                    point.insert(key.clone(), draw(d, &mut rng));
                }
                point
            })
            .collect()
    }

    /// A model's: how many trials are left to draw when claimed.
    pub fn undrawn(&self) -> i64 {
        match &self.model {
            Some(_) => self.trials - self.enqueue.len() as i64,
            None => 0,
        }
    }

    /// Each objective's mode, in order.
    pub fn modes(&self) -> Vec<Mode> {
        self.objectives.iter().map(|o| o.1).collect()
    }

    /// The metrics a draw reads: the objectives', then the constraints'.
    pub fn judged_metrics(&self) -> Vec<String> {
        let objectives = self.objectives.iter().map(|o| o.0.clone());
        objectives
            .chain(self.constraints.iter().map(|c| c.metric.clone()))
            .collect()
    }

    /// `train` with the smallest value of each key of the space (by number; a choice's first if
    /// its values are not numbers): what a placeholder trial is scheduled as until it is drawn.
    pub fn smallest_point(&self, train: &Map<String, Value>) -> Map<String, Value> {
        let mut point = train.clone();
        for (k, d) in &self.space {
            let v = match d {
                Distribution::LogUniform(lo, _) | Distribution::Uniform(lo, _) => Value::from(*lo),
                Distribution::Int(lo, _) => Value::from(*lo),
                Distribution::Choice(values) => values
                    .iter()
                    .filter(|v| v.is_number())
                    .min_by(|a, b| {
                        a.as_f64()
                            .unwrap_or(0.0)
                            .total_cmp(&b.as_f64().unwrap_or(0.0))
                    })
                    .unwrap_or(&values[0])
                    .clone(),
            };
            point.insert(k.clone(), v);
        }
        point
    }

    /// TPE: every point the trainer's combination rules could refuse among those TPE may draw (the
    /// values of the keys those rules read, in every combination, over `train`), so a sweep whose
    /// draws could be refused is refused at submit instead. Other keys are irrelevant to the rules.
    pub fn rule_points(&self, train: &Map<String, Value>) -> Vec<Map<String, Value>> {
        let mut points = vec![self.smallest_point(train)];
        for (k, d) in &self.space {
            if !protocol::train::COMBINED_KEYS.contains(&k.as_str()) {
                continue;
            }
            let values: Vec<Value> = match d {
                Distribution::Choice(v) => v.clone(),
                Distribution::Int(lo, hi) if hi - lo < 1000 => {
                    (*lo..=*hi).map(Value::from).collect()
                }
                Distribution::Int(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
                _ => continue,
            };
            if points.len().saturating_mul(values.len()) > MAX_JOBS {
                break; // bounded work; the worker still checks every job it runs
            }
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert(k.clone(), v.clone());
                        q
                    })
                })
                .collect();
        }
        points
    }

    /// The sampler of a search drawn when claimed.
    pub fn sampler(&self) -> Option<Sampler> {
        let modes = self.modes();
        Some(match self.model.as_ref()? {
            Model::Tpe(o) => Sampler::Tpe(tpe::Tpe::new(&self.space, self.seed, o, &modes)),
            Model::Nsga2(o) => Sampler::Nsga2(nsga2::Nsga2::new(&self.space, self.seed, o, &modes)),
        })
    }

    /// As submitted, for storage and display (every default filled in): one objective as
    /// `metric` and `mode`, several as `objectives`.
    pub fn to_file(&self) -> SearchFile {
        let tpe = match &self.model {
            Some(Model::Tpe(o)) => Some(o),
            _ => None,
        };
        let nsga2 = match &self.model {
            Some(Model::Nsga2(o)) => Some(o),
            _ => None,
        };
        let one = (self.objectives.len() == 1).then(|| self.objectives[0].clone());
        let several = (self.objectives.len() > 1).then(|| {
            self.objectives
                .iter()
                .map(|(metric, mode)| Objective {
                    metric: metric.clone(),
                    mode: Some(*mode),
                })
                .collect()
        });
        let pbt = self.pbt.as_ref();
        SearchFile {
            method: match (&self.model, pbt) {
                (Some(Model::Tpe(_)), _) => SearchMethod::Tpe,
                (Some(Model::Nsga2(_)), _) => SearchMethod::Nsga2,
                (None, Some(_)) => SearchMethod::Pbt,
                (None, None) => SearchMethod::Random,
            },
            trials: Some(self.trials).filter(|_| pbt.is_none()),
            seed: Some(self.seed),
            space: Some(self.space.iter().cloned().collect()),
            metric: one.as_ref().map(|o| o.0.clone()),
            mode: one.map(|o| o.1),
            objectives: several,
            constraints: Some(self.constraints.clone()).filter(|c| !c.is_empty()),
            startup_trials: tpe.map(|o| o.startup_trials),
            ei_candidates: tpe.map(|o| o.ei_candidates),
            multivariate: tpe.map(|o| o.multivariate),
            constant_liar: tpe.map(|o| o.constant_liar),
            population: nsga2.map(|o| o.population).or(pbt.map(|_| self.trials)),
            interval: pbt.map(|o| o.interval),
            quantile: pbt.map(|o| o.quantile),
            resample_probability: pbt.map(|o| o.resample_probability),
            perturb: pbt.map(|o| o.perturb.clone()),
            crossover_prob: nsga2.map(|o| o.crossover_prob),
            swapping_prob: nsga2.map(|o| o.swapping_prob),
            mutation_prob: nsga2.and_then(|o| o.mutation_prob),
            warm_start: Some(self.warm_start.clone()).filter(|w| !w.is_empty()),
            enqueue: Some(self.enqueue.clone()).filter(|e| !e.is_empty()),
        }
    }
}

pub(crate) fn draw(d: &Distribution, rng: &mut ChaCha8Rng) -> Value {
    match d {
        Distribution::LogUniform(lo, hi) => {
            let x: f64 = rng.gen_range(lo.ln()..hi.ln());
            // Clamped: exp(ln(x)) may round a hair outside the bounds.
            Value::from(x.exp().clamp(*lo, *hi))
        }
        Distribution::Uniform(lo, hi) => Value::from(rng.gen_range(*lo..*hi)),
        Distribution::Int(lo, hi) => Value::from(rng.gen_range(*lo..=*hi)),
        Distribution::Choice(values) => values[rng.gen_range(0..values.len())].clone(),
    }
}

/// Checks `[search]`. None: the grid (absent, or `method = "grid"`). `repeats` bounds the trials
/// (trials x repeats jobs); `has_grid` says whether `[grid]` was given (a search draws its axes
/// from `[search.space]` instead).
pub fn validate(
    file: Option<SearchFile>,
    train: &Map<String, Value>,
    has_grid: bool,
    repeats: i64,
    keys: Keys,
) -> Result<Option<Search>, SpecError> {
    let Some(mut file) = file else {
        return Ok(None);
    };
    check_keys_of_method(&file)?;
    if file.method == SearchMethod::Grid {
        return Ok(None);
    }
    if has_grid {
        return err(
            "grid",
            "a search draws its values from [search.space]; leave [grid] out",
        );
    }
    let modelled = file.method != SearchMethod::Random;
    if modelled && repeats > 1 {
        return err(
            "run.repeats",
            format!(
                "must be 1 with method = \"{}\" (each trial is its own point)",
                file.method.as_str()
            ),
        );
    }
    if file.method == SearchMethod::Pbt {
        return super::pbt::validate(file, train, repeats, keys).map(Some);
    }
    let (trials, seed) = trials_and_seed(&file, repeats)?;
    let space = check_space(file.space.take(), train, keys)?;
    let given = objectives::Given {
        objectives: file.objectives.as_deref(),
        metric: file.metric.as_deref(),
        mode: file.mode,
    };
    let objectives = objectives::objectives(given, modelled.then_some("accuracy"), keys)?;
    let constraints = objectives::constraints(file.constraints.as_deref(), keys)?;
    let model = match file.method {
        SearchMethod::Tpe => Some(Model::Tpe(tpe_options(&file, objectives.len())?)),
        SearchMethod::Nsga2 => Some(Model::Nsga2(nsga2_options(&file, trials)?)),
        _ => None,
    };
    let (warm_start, enqueue) = drawn_first(file, trials, &space)?;
    Ok(Some(Search {
        trials,
        seed,
        space,
        objectives,
        constraints,
        model,
        warm_start,
        enqueue,
        pbt: None,
    }))
}

/// `trials` (1 to the most jobs, with repeats) and `seed` (0 by default).
pub(super) fn trials_and_seed(file: &SearchFile, repeats: i64) -> Result<(i64, i64), SpecError> {
    let trials = match file.trials {
        None => return err("search.trials", "missing"),
        Some(n) if n >= 1 && n.saturating_mul(repeats) <= MAX_JOBS as i64 => n,
        Some(_) => {
            return err(
                "search.trials",
                format!("must be at least 1, and trials x repeats at most {MAX_JOBS}"),
            )
        }
    };
    let seed = match file.seed {
        None => 0,
        Some(n) if (0..=MAX_SEED).contains(&n) => n,
        Some(_) => {
            return err(
                "search.seed",
                format!("must be an integer from 0 to {MAX_SEED}"),
            )
        }
    };
    Ok((trials, seed))
}

/// `[search.space]`: at least one option, none also in `[train]`, every distribution one the
/// option accepts.
pub(super) fn check_space(
    space: Option<indexmap::IndexMap<String, Distribution>>,
    train: &Map<String, Value>,
    keys: Keys,
) -> Result<Vec<(String, Distribution)>, SpecError> {
    let Some(space) = space else {
        return err("search.space", "missing (a table of option = distribution)");
    };
    if space.is_empty() {
        return err("search.space", "must name at least one option");
    }
    space
        .into_iter()
        .map(|(k, d)| {
            let field = format!("search.space.{k}");
            if train.contains_key(&k) {
                return err(
                    field,
                    format!("{k} is set in both [train] and [search.space]"),
                );
            }
            check_distribution(&field, &k, &d, keys)?;
            Ok((k, d))
        })
        .collect()
}

/// Each method's own keys: a grid takes none of a search's, random none of a model's, TPE none of
/// NSGA-II's and the reverse.
fn check_keys_of_method(file: &SearchFile) -> Result<(), SpecError> {
    let search = [
        ("trials", file.trials.is_some()),
        ("seed", file.seed.is_some()),
        ("space", file.space.is_some()),
        ("metric", file.metric.is_some()),
        ("mode", file.mode.is_some()),
        ("objectives", file.objectives.is_some()),
        ("constraints", file.constraints.is_some()),
    ];
    let model = [
        ("warm_start", file.warm_start.is_some()),
        ("enqueue", file.enqueue.is_some()),
    ];
    let tpe = [
        ("startup_trials", file.startup_trials.is_some()),
        ("ei_candidates", file.ei_candidates.is_some()),
        ("multivariate", file.multivariate.is_some()),
        ("constant_liar", file.constant_liar.is_some()),
    ];
    let nsga2 = [
        ("crossover_prob", file.crossover_prob.is_some()),
        ("swapping_prob", file.swapping_prob.is_some()),
        ("mutation_prob", file.mutation_prob.is_some()),
    ];
    let population = [("population", file.population.is_some())];
    let pbt = [
        ("interval", file.interval.is_some()),
        ("quantile", file.quantile.is_some()),
        ("resample_probability", file.resample_probability.is_some()),
        ("perturb", file.perturb.is_some()),
    ];
    // A population trains at once, each member its own whole run: no trial count, no history or
    // points of a model's, one metric.
    let not_pbt = [
        ("trials", file.trials.is_some()),
        ("objectives", file.objectives.is_some()),
        ("constraints", file.constraints.is_some()),
    ];
    let given = |keys: &[(&'static str, bool)]| keys.iter().find(|(_, set)| *set).map(|(k, _)| *k);
    const SEARCH: &str =
        "only for method = \"random\", \"tpe\", \"nsga2\" or \"pbt\" (a grid's axes are in [grid])";
    const MODEL: &str = "only for method = \"tpe\" or \"nsga2\"";
    const TPE: &str = "only for method = \"tpe\"";
    const NSGA2: &str = "only for method = \"nsga2\"";
    const POPULATION: &str = "only for method = \"nsga2\" or \"pbt\"";
    const PBT: &str = "only for method = \"pbt\"";
    const NOT_PBT: &str =
        "not with method = \"pbt\" (its `population` trains at once, judged by one `metric`)";
    let refused = match file.method {
        SearchMethod::Grid => given(&search)
            .map(|k| (k, SEARCH))
            .or(given(&model).map(|k| (k, MODEL))),
        SearchMethod::Random => given(&model).map(|k| (k, MODEL)),
        SearchMethod::Tpe => None,
        SearchMethod::Nsga2 => None,
        SearchMethod::Pbt => given(&not_pbt)
            .map(|k| (k, NOT_PBT))
            .or(given(&model).map(|k| (k, MODEL))),
    };
    let refused = refused
        .or(match file.method {
            SearchMethod::Nsga2 | SearchMethod::Pbt => None,
            _ => given(&population).map(|k| (k, POPULATION)),
        })
        .or(match file.method {
            SearchMethod::Pbt => None,
            _ => given(&pbt).map(|k| (k, PBT)),
        });
    let refused = refused
        .or(match file.method {
            SearchMethod::Tpe => None,
            _ => given(&tpe).map(|k| (k, TPE)),
        })
        .or(match file.method {
            SearchMethod::Nsga2 => None,
            _ => given(&nsga2).map(|k| (k, NSGA2)),
        });
    match refused {
        Some((k, why)) => err(format!("search.{k}"), why),
        None => Ok(()),
    }
}

/// TPE's own keys, defaults filled in (Optuna 5.0's; `multivariate` true with one objective, as
/// before, and false with several, as Optuna's).
fn tpe_options(file: &SearchFile, objectives: usize) -> Result<tpe::Options, SpecError> {
    use tpe::Options as O;
    let startup_trials = file.startup_trials.unwrap_or(O::DEFAULT_STARTUP_TRIALS);
    if !(0..=MAX_JOBS as i64).contains(&startup_trials) {
        return err(
            "search.startup_trials",
            format!("must be from 0 to {MAX_JOBS}"),
        );
    }
    let ei_candidates = file.ei_candidates.unwrap_or(O::DEFAULT_EI_CANDIDATES);
    if !(1..=O::MAX_EI_CANDIDATES).contains(&ei_candidates) {
        return err(
            "search.ei_candidates",
            format!("must be from 1 to {}", O::MAX_EI_CANDIDATES),
        );
    }
    Ok(O {
        startup_trials,
        ei_candidates,
        multivariate: file.multivariate.unwrap_or(objectives <= 1),
        constant_liar: file.constant_liar.unwrap_or(true),
    })
}

/// NSGA-II's own keys, defaults filled in (Optuna 5.0's).
fn nsga2_options(file: &SearchFile, trials: i64) -> Result<nsga2::Options, SpecError> {
    use nsga2::Options as O;
    let population = file.population.unwrap_or(O::DEFAULT_POPULATION.min(trials));
    if !(O::MIN_POPULATION..=O::MAX_POPULATION).contains(&population) {
        return err(
            "search.population",
            format!(
                "must be from {} to {}",
                O::MIN_POPULATION,
                O::MAX_POPULATION
            ),
        );
    }
    if population > trials {
        return err(
            "search.population",
            format!("{population} is more than the {trials} trials (a generation would never end)"),
        );
    }
    let probability = |key: &str, v: Option<f64>| -> Result<Option<f64>, SpecError> {
        match v {
            Some(p) if !(0.0..=1.0).contains(&p) => err(
                format!("search.{key}"),
                "must be a probability, from 0 to 1",
            ),
            v => Ok(v),
        }
    };
    Ok(O {
        population,
        crossover_prob: probability("crossover_prob", file.crossover_prob)?
            .unwrap_or(O::DEFAULT_CROSSOVER_PROB),
        swapping_prob: probability("swapping_prob", file.swapping_prob)?
            .unwrap_or(O::DEFAULT_SWAPPING_PROB),
        mutation_prob: probability("mutation_prob", file.mutation_prob)?,
    })
}

type Points = Vec<Map<String, Value>>;

/// A model's `warm_start` (each sweep once, at most 16) and `enqueue` (at most `trials` points,
/// each a full point of the space).
fn drawn_first(
    file: SearchFile,
    trials: i64,
    space: &[(String, Distribution)],
) -> Result<(Vec<i64>, Points), SpecError> {
    // A sweep named twice would count its history twice: once is what it means.
    let mut warm_start = file.warm_start.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    warm_start.retain(|id| seen.insert(*id));
    if warm_start.len() > MAX_WARM_START {
        return err(
            "search.warm_start",
            format!("at most {MAX_WARM_START} sweeps"),
        );
    }
    if let Some(i) = warm_start.iter().position(|id| *id < 1) {
        return err(format!("search.warm_start[{i}]"), "must be a sweep id");
    }
    let enqueue = file.enqueue.unwrap_or_default();
    if enqueue.len() as i64 > trials {
        return err(
            "search.enqueue",
            format!("{} points, more than the {trials} trials", enqueue.len()),
        );
    }
    for (i, point) in enqueue.iter().enumerate() {
        check_enqueued(&format!("search.enqueue[{i}]"), point, space)?;
    }
    Ok((warm_start, enqueue))
}

/// An enqueued point names every key of the space, no other, each with a value its distribution
/// could draw.
fn check_enqueued(
    field: &str,
    point: &Map<String, Value>,
    space: &[(String, Distribution)],
) -> Result<(), SpecError> {
    if let Some(k) = point.keys().find(|k| !space.iter().any(|(s, _)| s == *k)) {
        return err(format!("{field}.{k}"), "not a key of [search.space]");
    }
    for (k, d) in space {
        let at = format!("{field}.{k}");
        let Some(v) = point.get(k) else {
            return err(
                at,
                "missing (an enqueued point names every key of the space)",
            );
        };
        if d.internal(v).is_none() {
            return err(
                at,
                format!("{v} is outside the distribution of search.space.{k}"),
            );
        }
    }
    Ok(())
}

/// One distribution, checked against the option it draws for: both bounds (or every choice) must
/// be values the option accepts, so every draw is.
fn check_distribution(
    field: &str,
    key: &str,
    d: &Distribution,
    keys: Keys,
) -> Result<(), SpecError> {
    let (lo, hi) = match d {
        Distribution::LogUniform(lo, hi) | Distribution::Uniform(lo, hi) => {
            let at = match d {
                Distribution::LogUniform(..) => format!("{field}.log_uniform"),
                _ => format!("{field}.uniform"),
            };
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return err(&at, "must be [lo, hi] with lo < hi");
            }
            if matches!(d, Distribution::LogUniform(..)) && *lo <= 0.0 {
                return err(&at, "lo must be positive (a log scale)");
            }
            ((at.clone(), Value::from(*lo)), (at, Value::from(*hi)))
        }
        Distribution::Int(lo, hi) => {
            let at = format!("{field}.int");
            if lo > hi {
                return err(&at, "must be [lo, hi] with lo <= hi");
            }
            ((at.clone(), Value::from(*lo)), (at, Value::from(*hi)))
        }
        Distribution::Choice(values) => {
            let at = format!("{field}.choice");
            if values.is_empty() {
                return err(&at, "must list at least one value");
            }
            if values.len() > MAX_JOBS {
                return err(&at, format!("at most {MAX_JOBS} values"));
            }
            for (i, x) in values.iter().enumerate() {
                check_value(&format!("{at}[{i}]"), key, x, keys)?;
            }
            return Ok(());
        }
    };
    check_value(&format!("{}[0]", lo.0), key, &lo.1, keys)?;
    check_value(&format!("{}[1]", hi.0), key, &hi.1, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn space() -> Search {
        let v = json!({"method": "random", "trials": 4000, "seed": 7, "space": {
            "lr": {"log_uniform": [1e-4, 1e-1]},
            "batch_size": {"choice": [16, 32, 64, 128]},
            "momentum": {"uniform": [0.8, 0.99]},
            "warmup_epochs": {"int": [0, 5]},
        }});
        let file = serde_json::from_value(v).unwrap();
        validate(
            Some(file),
            &Map::new(),
            false,
            1,
            crate::sweep::Keys::Trainer,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_trials_and_another_seed_others() {
        let s = space();
        assert_eq!(s.sample(&Map::new()), s.sample(&Map::new()));
        let other = Search {
            seed: 8,
            ..s.clone()
        };
        assert_ne!(s.sample(&Map::new()), other.sample(&Map::new()));
    }

    /// 4,000 draws with a fixed seed: every value within its bounds, and the frequencies those of
    /// the distribution (margins of about five standard errors).
    #[test]
    fn draws_follow_their_distributions() {
        let trials = space().sample(&Map::new());
        let n = trials.len() as f64;
        let col = |k: &str| -> Vec<f64> { trials.iter().map(|t| t[k].as_f64().unwrap()).collect() };
        // log-uniform over three decades: a third in each, mean of log10 at -2.5.
        let lr = col("lr");
        assert!(lr.iter().all(|x| (1e-4..=1e-1).contains(x)));
        for (lo, hi) in [(1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1)] {
            let f = lr.iter().filter(|x| (lo..hi).contains(*x)).count() as f64 / n;
            assert!((f - 1.0 / 3.0).abs() < 0.04, "decade {lo}: {f}");
        }
        let mean_log = lr.iter().map(|x| x.log10()).sum::<f64>() / n;
        assert!((mean_log + 2.5).abs() < 0.05, "{mean_log}");
        // uniform on [0.8, 0.99]: mean 0.895, variance (0.19)^2 / 12.
        let m = col("momentum");
        assert!(m.iter().all(|x| (0.8..0.99).contains(x)));
        let mean = m.iter().sum::<f64>() / n;
        let var = m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.895).abs() < 0.005, "{mean}");
        assert!((var - 0.19f64.powi(2) / 12.0).abs() < 0.0005, "{var}");
        // int on 0..=5 and a choice of 4: each value equally often, and only those values.
        for (k, values) in [
            ("warmup_epochs", vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            ("batch_size", vec![16.0, 32.0, 64.0, 128.0]),
        ] {
            let c = col(k);
            assert!(c.iter().all(|x| values.contains(x)), "{k}");
            for v in &values {
                let f = c.iter().filter(|x| *x == v).count() as f64 / n;
                let p = 1.0 / values.len() as f64;
                assert!(
                    (f - p).abs() < 5.0 * (p * (1.0 - p) / n).sqrt(),
                    "{k}={v}: {f}"
                );
            }
            assert!(
                trials.iter().all(|t| t[k].is_i64()),
                "integers stay integers"
            );
        }
    }
}
