//! TPE (`[search] method = "tpe"`): each trial is drawn when a worker claims it, from the sweep's
//! history at that moment, by the Tree-structured Parzen Estimator as Optuna 5.0 models it. The
//! history is split into a good group (the best `min(ceil(n / 10), 25)` finished trials; with
//! several objectives the best `ceil(n / 10)` by non-domination rank, the last rank cut by
//! hypervolume subset selection) and a bad one (the rest, and with `constant_liar` every trial
//! still running); infeasible trials (constraints) rank after feasible ones, by their violation. A
//! Parzen estimator is fitted to each ([`parzen`]); `ei_candidates` points are drawn from the good
//! model and the one with the largest l(x)/g(x) is the trial. Before `startup_trials` trials have
//! finished, trials are drawn at random. Everything here is pure: the store reads the history,
//! [`crate::lifecycle`] decides when to draw. Choices beyond Optuna's: docs/search.md.
pub mod parzen;
pub mod truncnorm;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::early_stop::Mode;
use super::pareto;
use super::search::Distribution;
use parzen::{Dim, Estimator};

/// TPE's own settings (the space, trials and seed are the search's).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub startup_trials: i64,
    pub ei_candidates: i64,
    pub multivariate: bool,
    pub constant_liar: bool,
}

impl Options {
    pub const DEFAULT_STARTUP_TRIALS: i64 = 10;
    pub const DEFAULT_EI_CANDIDATES: i64 = 24;
    pub const MAX_EI_CANDIDATES: i64 = 10_000;
    /// The most work one draw may take, as finished trials in its history (its own and its
    /// warm-start sweeps') times `ei_candidates`: a claim that reaches a trial draws it, so the draw
    /// must stay short (about 50 ns a unit here: 50,000,000 is about 2.5 s on one core).
    pub const MAX_DRAW_COST: i64 = 50_000_000;
}

/// Where a trial of the history stands, as the model ranks it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ran to its end: each objective's metric at the last epoch it reported.
    Complete(Vec<f64>),
    /// Stopped early: its last reported (epoch, value) of the (first) objective, if any.
    Pruned(Option<(i64, f64)>),
    /// Its loss went non-finite: ranked after every other finished trial.
    Diverged,
    /// Drawn and not finished (pending or running): a bad point under `constant_liar`.
    Running,
}

/// One trial of the history: its values in the model's terms (see [`Tpe::to_internal`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub x: Vec<f64>,
    pub outcome: Outcome,
    /// The sum of its constraints' violations: 0 when feasible (or without constraints).
    pub violation: f64,
}

/// A sampler over one space.
#[derive(Debug, Clone)]
pub struct Tpe {
    pub space: Vec<(String, Distribution)>,
    pub dims: Vec<Dim>,
    pub seed: i64,
    pub startup_trials: usize,
    pub ei_candidates: usize,
    pub multivariate: bool,
    pub constant_liar: bool,
    /// Per objective, larger is better: values are negated so the model always minimises.
    pub maximize: Vec<bool>,
}

/// The size of the good group out of `n` finished trials (Optuna's default gamma; with several
/// objectives it has no cap).
pub fn n_good(n: usize, objectives: usize) -> usize {
    match objectives {
        0 | 1 => n.div_ceil(10).min(25),
        _ => n.div_ceil(10),
    }
}

impl Tpe {
    /// The sampler over `space` for objectives of these `modes` (the first is what pruned trials
    /// rank by).
    pub fn new(space: &[(String, Distribution)], seed: i64, o: &Options, modes: &[Mode]) -> Self {
        Tpe {
            dims: dims_of(space),
            space: space.to_vec(),
            seed,
            startup_trials: o.startup_trials as usize,
            ei_candidates: o.ei_candidates as usize,
            multivariate: o.multivariate,
            constant_liar: o.constant_liar,
            maximize: modes.iter().map(|m| *m == Mode::Max).collect(),
        }
    }

    /// The trial number `number`'s values, drawn from `history` (in the order its trials were
    /// created; the trial being drawn is not in it). Its random stream is (seed, number) alone.
    pub fn suggest(&self, history: &[Trial], number: i64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed as u64);
        rng.set_stream(number as u64);
        let finished = history
            .iter()
            .filter(|t| t.outcome != Outcome::Running)
            .count();
        if finished < self.startup_trials {
            return self
                .dims
                .iter()
                .map(|d| draw_uniform(d, &mut rng))
                .collect();
        }
        let kept: Vec<&Trial> = history
            .iter()
            .filter(|t| self.constant_liar || t.outcome != Outcome::Running)
            .collect();
        let (good, bad) = self.split(&kept, n_good(finished, self.maximize.len()));
        let rows = |group: &[usize], dims: &[usize]| -> Vec<Vec<f64>> {
            group
                .iter()
                .map(|&i| dims.iter().map(|&d| kept[i].x[d]).collect())
                .collect()
        };
        let all: Vec<usize> = (0..self.dims.len()).collect();
        let groups: Vec<Vec<usize>> = match self.multivariate {
            true => vec![all],
            false => all.into_iter().map(|d| vec![d]).collect(),
        };
        let mut x = vec![0.0; self.dims.len()];
        for dims in groups {
            let space: Vec<Dim> = dims.iter().map(|&d| self.dims[d].clone()).collect();
            // Several objectives: every good trial weighs the same (Optuna 5.0).
            let l = match self.maximize.len() > 1 {
                true => Estimator::uniform(&rows(&good, &dims), &space),
                false => Estimator::new(&rows(&good, &dims), &space),
            };
            let g = Estimator::new(&rows(&bad, &dims), &space);
            let best = best_candidate(&l, &g, self.ei_candidates, &mut rng);
            for (v, &d) in best.into_iter().zip(&dims) {
                x[d] = v;
            }
        }
        x
    }

    /// Indices of the good and the bad trials, each in history order. Feasible completed trials
    /// rank first (by value; with several objectives by non-domination rank, ties by hypervolume
    /// subset selection); then feasible pruned ones (deeper epochs first, then by value there);
    /// then infeasible ones by violation; then diverged ones; trials still running are always bad.
    pub fn split(&self, trials: &[&Trial], n_below: usize) -> (Vec<usize>, Vec<usize>) {
        let sign = if self.maximize.first() == Some(&true) {
            -1.0
        } else {
            1.0
        };
        let (mut complete, mut pruned, mut infeasible, mut diverged, mut running) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (i, t) in trials.iter().enumerate() {
            match &t.outcome {
                Outcome::Running => running.push(i),
                Outcome::Diverged => diverged.push(i),
                _ if t.violation > 0.0 => infeasible.push((i, t.violation)),
                Outcome::Complete(v) => complete.push((i, self.loss(v))),
                Outcome::Pruned(last) => pruned.push((i, pruned_rank(*last, sign))),
            }
        }
        let (mut good, mut bad) = split_complete(&complete, n_below);
        // Stable sorts: ties keep the history's order, as Python's sorted does.
        pruned.sort_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.1 .1.total_cmp(&b.1 .1)));
        infeasible.sort_by(|a, b| a.1.total_cmp(&b.1));
        let rest = pruned
            .iter()
            .map(|p| p.0)
            .chain(infeasible.iter().map(|p| p.0))
            .chain(diverged);
        for i in rest {
            match good.len() < n_below {
                true => good.push(i),
                false => bad.push(i),
            }
        }
        bad.extend(running);
        good.sort_unstable();
        bad.sort_unstable();
        (good, bad)
    }

    /// Values as losses: maximised objectives negated.
    fn loss(&self, values: &[f64]) -> Vec<f64> {
        values
            .iter()
            .zip(&self.maximize)
            .map(|(v, max)| if *max { -v } else { *v })
            .collect()
    }

    /// A trial's parameters in the model's terms (see [`super::search::to_internal`]).
    pub fn to_internal(&self, params: &Map<String, Value>) -> Option<Vec<f64>> {
        super::search::to_internal(&self.space, params)
    }

    /// The model's values as the trial's parameters.
    pub fn to_params(&self, x: &[f64]) -> Map<String, Value> {
        super::search::to_params(&self.space, x)
    }
}

/// The good and bad completed trials (indices): the `n_below` best by value with one objective;
/// with several, whole non-domination ranks while they fit and the rank that does not fit cut by
/// Optuna's greedy hypervolume subset selection.
fn split_complete(complete: &[(usize, Vec<f64>)], n_below: usize) -> (Vec<usize>, Vec<usize>) {
    let n_below = n_below.min(complete.len());
    let single = complete.first().is_none_or(|c| c.1.len() == 1);
    if single {
        let mut sorted = complete.to_vec();
        sorted.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]));
        let ids: Vec<usize> = sorted.iter().map(|c| c.0).collect();
        return (ids[..n_below].to_vec(), ids[n_below..].to_vec());
    }
    let ids = |keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
        (0..complete.len())
            .filter(|&k| keep(k))
            .map(|k| complete[k].0)
            .collect()
    };
    if n_below == 0 || n_below == complete.len() {
        return (ids(&|_| n_below > 0), ids(&|_| n_below == 0));
    }
    let loss: Vec<Vec<f64>> = complete.iter().map(|c| c.1.clone()).collect();
    let ranks = pareto::ranks(&loss, None, Some(n_below));
    // The last rank that fits whole, and how many it and those before it hold.
    let (mut whole, mut taken) = (None, 0);
    for r in 0..=ranks.iter().copied().max().unwrap_or(0) {
        let n = ranks.iter().filter(|&&x| x == r).count();
        if taken + n > n_below {
            break;
        }
        (whole, taken) = (Some(r), taken + n);
    }
    let mut below: Vec<bool> = ranks
        .iter()
        .map(|&r| whole.is_some_and(|w| r <= w))
        .collect();
    if taken < n_below {
        let tie_rank = whole.map_or(0, |w| w + 1);
        let tied: Vec<usize> = (0..complete.len())
            .filter(|&k| ranks[k] == tie_rank)
            .collect();
        let tied_loss: Vec<Vec<f64>> = tied.iter().map(|&k| loss[k].clone()).collect();
        let reference = pareto::reference_point(&tied_loss);
        for j in pareto::hssp(&tied_loss, n_below - taken, &reference) {
            below[tied[j]] = true;
        }
    }
    (ids(&|k| below[k]), ids(&|k| !below[k]))
}

/// Pruned trials sort by (-epoch, value); a NaN value last among its epoch; none reported after all.
fn pruned_rank(last: Option<(i64, f64)>, sign: f64) -> (i64, f64) {
    match last {
        Some((epoch, v)) if v.is_nan() => (-epoch, f64::INFINITY),
        Some((epoch, v)) => (-epoch, sign * v),
        None => (1, 0.0),
    }
}

/// Draws `n` candidates from the good model and keeps the one with the largest ln l - ln g (the
/// first of equals).
fn best_candidate(l: &Estimator, g: &Estimator, n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut best: Option<(f64, Vec<f64>)> = None;
    for _ in 0..n {
        let x = l.sample(rng);
        let score = l.log_pdf(&x) - g.log_pdf(&x);
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, x));
        }
    }
    best.expect("at least one candidate").1
}

/// A space's dimensions as the models see them.
pub fn dims_of(space: &[(String, Distribution)]) -> Vec<Dim> {
    space.iter().map(|(_, d)| dim_of(d)).collect()
}

fn dim_of(d: &Distribution) -> Dim {
    match d {
        Distribution::LogUniform(lo, hi) => Dim::Float {
            lo: *lo,
            hi: *hi,
            log: true,
        },
        Distribution::Uniform(lo, hi) => Dim::Float {
            lo: *lo,
            hi: *hi,
            log: false,
        },
        Distribution::Int(lo, hi) => Dim::Int {
            lo: *lo as f64,
            hi: *hi as f64,
        },
        Distribution::Choice(v) => Dim::Choice(v.len()),
    }
}

/// A startup trial: each value uniformly (uniformly in ln for log scales).
pub fn draw_uniform(d: &Dim, rng: &mut ChaCha8Rng) -> f64 {
    match *d {
        Dim::Float { lo, hi, log: true } => rng.gen_range(lo.ln()..hi.ln()).exp().clamp(lo, hi),
        Dim::Float { lo, hi, log: false } => rng.gen_range(lo..hi),
        Dim::Int { lo, hi } => rng.gen_range(lo as i64..=hi as i64) as f64,
        Dim::Choice(n) => rng.gen_range(0..n) as f64,
    }
}
