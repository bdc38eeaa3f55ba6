//! Which hyperparameter mattered: PED-ANOVA (Watanabe et al., IJCAI 2023), computed as Optuna 5.0's
//! default evaluator computes it (`PedAnovaImportanceEvaluator(target_quantile=0.1,
//! region_quantile=1.0, evaluate_on_local=True)`), so a sweep's importances equal what
//! `optuna.importance.get_param_importances` gives on the same trials (the parity test holds them
//! to 1e-9).
//!
//! In short: the top 10% of trials by the metric are the target set; for each parameter, a Parzen
//! estimator of the target set and one of all trials are built on a grid over the parameter's
//! domain (at most 50 cells; a choice's cells are its values), and the parameter's importance is
//! the Pearson divergence between the two, scaled by the share of trials the parameter was
//! active in. A parameter whose values are spread the same way among the best trials as among all
//! trials does not matter.
use crate::results::shape::short;
use crate::store::AnalysisTrial;
use crate::sweep::early_stop::Mode;
use crate::sweep::search::Distribution;
use crate::sweep::tpe::parzen::log_sum_exp;
use crate::sweep::tpe::truncnorm::log_gauss_mass;
use crate::sweep::value_key;
use crate::sweep::SweepSpec;
use protocol::views::{BestTrial, Importance, LeftOut};
use protocol::JobStatus;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// Cells of a numerical parameter's grid, at most.
const N_STEPS: usize = 50;
/// The weight of the uniform prior kernel beside the observations.
const PRIOR_WEIGHT: f64 = 1.0;
/// The best share of trials that makes the target set.
const TARGET_QUANTILE: f64 = 0.1;
/// Trials a parameter must be active in to be judged at all.
const MIN_TRIALS_IN_REGIME: usize = 2;
/// Below this many trials in the target set, the answer says it is unstable (as Optuna's
/// documentation advises).
pub const STABLE_TARGET: usize = 5;

/// One finished trial: its parameters and its value of the metric.
#[derive(Debug, Clone)]
pub struct Trial {
    pub params: Map<String, Value>,
    pub value: f64,
}

/// Importances normalised to sum 1, largest first, and the size of the target set.
#[derive(Debug, Clone, PartialEq)]
pub struct Importances {
    pub importances: Vec<(String, f64)>,
    pub target_trials: usize,
}

/// PED-ANOVA over `trials` (finite values only; the caller leaves out the others) for the
/// parameters `space` names. `lower_is_better` is the metric's mode. None below 2 trials (Optuna
/// returns equal shares there, which say nothing).
pub fn ped_anova(
    trials: &[Trial],
    space: &[(String, Distribution)],
    lower_is_better: bool,
) -> Option<Importances> {
    if trials.len() < 2 {
        return None;
    }
    let target = top_quantile(trials, TARGET_QUANTILE, lower_is_better);
    // gamma' / gamma with the region the whole space (region_quantile = 1).
    let quantile = target.len() as f64 / trials.len() as f64;
    let mut raw: Vec<(String, f64)> = space
        .iter()
        .map(|(name, dist)| {
            (
                name.clone(),
                importance(name, dist, trials, &target) * quantile * quantile,
            )
        })
        .collect();
    let sum: f64 = raw.iter().map(|(_, v)| v).sum();
    let n = raw.len() as f64;
    for (_, v) in &mut raw {
        *v = if sum == 0.0 { 1.0 / n } else { *v / sum };
    }
    raw.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Some(Importances {
        importances: raw,
        target_trials: target.len(),
    })
}

/// The trials whose value is at least as good as the quantile's cut (ties all kept), as indices.
fn top_quantile(trials: &[Trial], quantile: f64, lower_is_better: bool) -> Vec<usize> {
    let sign = if lower_is_better { 1.0 } else { -1.0 };
    let losses: Vec<f64> = trials.iter().map(|t| sign * t.value).collect();
    let cut_index = ((quantile * losses.len() as f64).ceil() as usize).max(1) - 1;
    let mut sorted = losses.clone();
    sorted.sort_by(f64::total_cmp);
    let cut = sorted[cut_index];
    (0..losses.len()).filter(|&i| losses[i] <= cut).collect()
}

/// One parameter's unnormalised importance: over the trials it is active in (its regime), the
/// share of the target set squared over the regime's share, times the divergence.
fn importance(name: &str, dist: &Distribution, trials: &[Trial], target: &[usize]) -> f64 {
    let active: Vec<usize> = (0..trials.len())
        .filter(|&i| trials[i].params.contains_key(name))
        .collect();
    if active.len() < MIN_TRIALS_IN_REGIME || single(dist) {
        return 0.0;
    }
    let target_active: Vec<usize> = target
        .iter()
        .copied()
        .filter(|i| trials[*i].params.contains_key(name))
        .collect();
    if target_active.is_empty() {
        return 0.0;
    }
    let alpha = target_active.len() as f64 / target.len() as f64;
    let beta = active.len() as f64 / trials.len() as f64;
    let values =
        |idx: &[usize]| -> Vec<&Value> { idx.iter().map(|&i| &trials[i].params[name]).collect() };
    alpha * alpha / beta * pearson_divergence(dist, &values(&target_active), &values(&active))
}

/// A domain with one value only: nothing to learn from it.
fn single(dist: &Distribution) -> bool {
    match dist {
        Distribution::Choice(c) => c.len() <= 1,
        Distribution::Int(lo, hi) => lo == hi,
        Distribution::Uniform(lo, hi) | Distribution::LogUniform(lo, hi) => lo == hi,
    }
}

/// sum over the grid of p_local * (p_top / p_local - 1)^2, each density floored at 1e-12.
fn pearson_divergence(dist: &Distribution, top: &[&Value], local: &[&Value]) -> f64 {
    let (pdf_top, _) = grid_pdf(dist, top);
    let (pdf_local, _) = grid_pdf(dist, local);
    pdf_top
        .iter()
        .zip(&pdf_local)
        .map(|(t, l)| {
            let (t, l) = (t + 1e-12, l + 1e-12);
            l * (t / l - 1.0).powi(2)
        })
        .sum()
}

/// The Parzen estimator of `values` evaluated on every cell of the parameter's grid.
fn grid_pdf(dist: &Distribution, values: &[&Value]) -> (Vec<f64>, usize) {
    let counts = match dist {
        Distribution::Choice(choices) => {
            // By key, not by comparing each value with each choice: a grid axis of thousands of
            // values over a hundred thousand jobs would take seconds.
            let index: HashMap<String, usize> = choices
                .iter()
                .enumerate()
                .rev() // the first of equal choices wins
                .map(|(i, c)| (value_key(c), i))
                .collect();
            let mut counts = vec![0usize; choices.len()];
            for v in values {
                if let Some(&i) = index.get(&value_key(v)) {
                    counts[i] += 1;
                }
            }
            return (categorical_pdf(&counts), counts.len());
        }
        numeric => numerical_counts(numeric, values),
    };
    (discrete_pdf(&counts), counts.len())
}

/// How many values fall in each cell of a numerical domain's grid: `n` cells evenly over
/// [low, high] (in ln for a log scale), a value to its nearest cell (a tie to the lower one).
fn numerical_counts(dist: &Distribution, values: &[&Value]) -> Vec<usize> {
    let (low, high, log, n) = match *dist {
        Distribution::Int(lo, hi) => (
            lo as f64,
            hi as f64,
            false,
            ((hi - lo) as usize + 1).min(N_STEPS),
        ),
        Distribution::Uniform(lo, hi) => (lo, hi, false, N_STEPS),
        Distribution::LogUniform(lo, hi) => (lo.ln(), hi.ln(), true, N_STEPS),
        Distribution::Choice(_) => unreachable!("choices are counted by value"),
    };
    let step = (high - low) / (n - 1) as f64;
    let mut counts = vec![0usize; n];
    for v in values {
        let Some(x) = v.as_f64() else { continue };
        let x = if log { x.ln() } else { x };
        let i = ((x - low) / step - 0.5).ceil().clamp(0.0, (n - 1) as f64) as usize;
        counts[i] += 1;
    }
    counts
}

/// A choice's Parzen estimator: a kernel per observed value (its weight on that value, a share
/// of the prior on every value) and the uniform prior, mixed by the observations' counts. Each
/// kernel puts `base` on every value (and 1 more on its own), so a value's density is the shared
/// part plus its own kernel's extra: linear in the choices, not choices x kernels.
fn categorical_pdf(counts: &[usize]) -> Vec<f64> {
    let n_choices = counts.len();
    let observed: Vec<usize> = (0..n_choices).filter(|&i| counts[i] > 0).collect();
    if observed.is_empty() {
        return vec![1.0 / n_choices as f64; n_choices];
    }
    let n_kernels = observed.len() + 1;
    let mix = mixture_weights(
        &observed
            .iter()
            .map(|&i| counts[i] as f64)
            .collect::<Vec<_>>(),
    );
    let base = PRIOR_WEIGHT / n_kernels as f64;
    // Row sums: an observation's kernel, and the prior's.
    let (row_obs, row_prior) = (base * n_choices as f64 + 1.0, base * n_choices as f64);
    let kernels_mass: f64 = mix[..observed.len()].iter().sum();
    let shared = kernels_mass * base / row_obs + mix[observed.len()] * base / row_prior;
    let mut pdf = vec![shared; n_choices];
    for (k, &x) in observed.iter().enumerate() {
        pdf[x] += mix[k] / row_obs;
    }
    pdf
}

/// The observations' counts and the prior's weight, normalised.
fn mixture_weights(counts: &[f64]) -> Vec<f64> {
    let mut w: Vec<f64> = counts.to_vec();
    w.push(PRIOR_WEIGHT);
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

/// A grid's Parzen estimator: a discrete truncated normal kernel at each occupied cell with
/// Scott's bandwidth (floored so 90% of a kernel spans a cell), and a wide prior kernel at the
/// centre, mixed by the cells' counts; evaluated at every cell.
fn discrete_pdf(counts: &[usize]) -> Vec<f64> {
    let cells = counts.len();
    let (low, high) = (0.0, (cells - 1) as f64);
    let observed: Vec<usize> = (0..cells).filter(|&i| counts[i] > 0).collect();
    if observed.is_empty() {
        return (0..cells).map(|_| 1.0 / cells as f64).collect();
    }
    let obs: Vec<f64> = observed.iter().map(|&i| i as f64).collect();
    let w: Vec<f64> = observed.iter().map(|&i| counts[i] as f64).collect();
    let sigma = scott_bandwidth(&obs, &w).max(0.5 / 1.64);
    let mut mus = obs.clone();
    mus.push((low + high) / 2.0);
    let mut sigmas = vec![sigma; obs.len()];
    sigmas.push(high - low + 1.0);
    let log_mix: Vec<f64> = mixture_weights(&w).iter().map(|m| m.ln()).collect();
    (0..cells)
        .map(|x| {
            let x = x as f64;
            let logs: Vec<f64> = (0..mus.len())
                .map(|k| {
                    let (mu, s) = (mus[k], sigmas[k]);
                    log_mix[k] + log_gauss_mass((x - 0.5 - mu) / s, (x + 0.5 - mu) / s)
                        - log_gauss_mass((low - 0.5 - mu) / s, (high + 0.5 - mu) / s)
                })
                .collect();
            log_sum_exp(&logs).exp()
        })
        .collect()
}

/// Scott's rule on weighted observations (sorted): 1.059 min(IQR / 1.34, sd) n^-0.2, the
/// quartiles read off the cumulative counts as Optuna reads them.
fn scott_bandwidth(obs: &[f64], w: &[f64]) -> f64 {
    let total: f64 = w.iter().sum();
    let mean = obs.iter().zip(w).map(|(x, w)| x * w).sum::<f64>() / total;
    let var = obs
        .iter()
        .zip(w)
        .map(|(x, w)| (x - mean).powi(2) * w)
        .sum::<f64>()
        / (total - 1.0).max(1.0);
    let cum: Vec<f64> = w
        .iter()
        .scan(0.0, |acc, x| {
            *acc += x;
            Some(*acc)
        })
        .collect();
    // numpy's searchsorted: `left` the first cum >= v, `right` the first cum > v.
    let q1 = cum.partition_point(|&c| c < (total / 4.0).floor());
    let q3 = cum.partition_point(|&c| c <= (total * 3.0 / 4.0).floor());
    let iqr = obs[q3.min(obs.len() - 1)] - obs[q1.min(obs.len() - 1)];
    1.059 * (iqr / 1.34).min(var.sqrt()) * total.powf(-0.2)
}

// ---------- a sweep's importance: its axes, its objective, the trials that count ----------

/// A sweep's parameters: its search space as drawn, or its grid keys as choices among the values
/// the grid lists (as an Optuna study of the same trials would declare them). `[train]`'s shared
/// keys, and the seeds of `repeats`, are no parameters.
pub fn axes(spec: &SweepSpec) -> Vec<(String, Distribution)> {
    if let Some(search) = &spec.search {
        return search.space.clone();
    }
    let mut axes: Vec<(String, Vec<Value>)> = vec![];
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    for grid in &spec.grids {
        for (key, values) in grid {
            let at = match axes.iter().position(|(k, _)| k == key) {
                Some(i) => i,
                None => {
                    axes.push((key.clone(), vec![]));
                    axes.len() - 1
                }
            };
            for v in values {
                if seen.insert((at, value_key(v))) {
                    axes[at].1.push(v.clone());
                }
            }
        }
    }
    axes.into_iter()
        .map(|(k, values)| (k, Distribution::Choice(values)))
        .collect()
}

/// The metric and mode a sweep is judged by unless asked otherwise: its TPE objective, else its
/// early-stopping rule's metric, else accuracy (max).
pub fn objective(spec: &SweepSpec) -> (String, Mode) {
    if let Some(first) = spec.search.as_ref().and_then(|s| s.objectives.first()) {
        return first.clone();
    }
    if let Some(rule) = &spec.early_stop {
        return (rule.metric.clone(), rule.mode);
    }
    ("accuracy".into(), Mode::Max)
}

/// A counted job and its value of the metric.
pub type Counted<'a> = (&'a AnalysisTrial, f64);

/// The ended jobs a view counts (completed, with a finite value of the metric) and those it leaves
/// out, by why. Err below 2 counted: a view of fewer says nothing.
pub fn counted<'a>(
    trials: &'a [AnalysisTrial],
    metric: &str,
    what: &str,
) -> Result<(LeftOut, Vec<Counted<'a>>), String> {
    let count = |s: JobStatus| trials.iter().filter(|t| t.status == s).count();
    let left_out = LeftOut {
        diverged: count(JobStatus::Diverged),
        pruned: count(JobStatus::Pruned),
        no_value: trials
            .iter()
            .filter(|t| t.status == JobStatus::Completed && t.value.is_none())
            .count(),
    };
    let counted: Vec<Counted> = trials
        .iter()
        .filter(|t| t.status == JobStatus::Completed)
        .filter_map(|t| t.value.map(|v| (t, v)))
        .collect();
    if counted.len() < 2 {
        let why = match trials.iter().any(|t| t.value.is_some()) {
            true => format!("{} completed job(s) with a finite {metric}", counted.len()),
            false => format!("no ended job reported `{metric}`"),
        };
        return Err(format!(
            "{what} needs at least 2 completed jobs with a value of the metric: {why}"
        ));
    }
    Ok((left_out, counted))
}

/// The importance of each of the sweep's parameters for `metric`: over its completed jobs with a
/// finite value (diverged and pruned ones are left out, and counted). Err: why there is no
/// answer (fewer than 2 such jobs, or none that reported the metric).
pub fn of_sweep(
    spec: &SweepSpec,
    trials: &[AnalysisTrial],
    metric: &str,
    mode: Mode,
) -> Result<Importance, String> {
    let (left_out, counted) = counted(trials, metric, "importance")?;
    let space = axes(spec);
    let input: Vec<Trial> = counted
        .iter()
        .map(|(t, v)| Trial {
            params: t.params.clone(),
            value: *v,
        })
        .collect();
    let lower = mode == Mode::Min;
    let got = ped_anova(&input, &space, lower).expect("two trials or more");
    let best = counted
        .iter()
        .min_by(|a, b| match lower {
            true => a.1.total_cmp(&b.1),
            false => b.1.total_cmp(&a.1),
        })
        .map(|(t, v)| BestTrial {
            job: t.id,
            value: *v,
            params: space
                .iter()
                .filter_map(|(k, _)| t.params.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
        });
    let warning = (got.target_trials < STABLE_TARGET).then(|| {
        format!(
            "Only {} job(s) in the best 10%: importances from fewer than {STABLE_TARGET} are unstable",
            got.target_trials
        )
    });
    Ok(Importance {
        method: "ped_anova".into(),
        metric: metric.to_string(),
        mode: mode.as_str().to_string(),
        trials: counted.len(),
        left_out,
        importances: got
            .importances
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect(),
        best,
        warning,
    })
}

/// The importance as a markdown table (`server export --importance`): a line on what it rests on,
/// then a row per parameter with its share and the best job's value.
pub fn markdown(imp: &Importance) -> String {
    let best = imp.best.as_ref();
    let mut out = format!(
        "Importance of each parameter for {} ({}): PED-ANOVA over {} completed job(s); left out: {} diverged, {} pruned, {} without a value.{}\n",
        imp.metric,
        imp.mode,
        imp.trials,
        imp.left_out.diverged,
        imp.left_out.pruned,
        imp.left_out.no_value,
        best.map(|b| format!(
            " The best: job {} ({} {}).",
            b.job,
            imp.metric,
            match crate::results::shape::is_fraction(&imp.metric) {
                true => format!("{:.2}%", 100.0 * b.value),
                false => short(b.value),
            }
        ))
            .unwrap_or_default()
    );
    if let Some(w) = &imp.warning {
        out.push_str(&format!("{w}.\n"));
    }
    out.push_str("\n| parameter | importance | the best job's value |\n|---|---:|---|\n");
    for (name, share) in &imp.importances {
        let value = best
            .and_then(|b| b.params.get(name))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.as_f64().map(short).unwrap_or_else(|| n.to_string()),
                v => v.to_string(),
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "| {name} | {:.4} | {value} |\n",
            share.as_f64().unwrap_or(0.0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trial(x: f64, c: &str, value: f64) -> Trial {
        let params = json!({"x": x, "c": c}).as_object().unwrap().clone();
        Trial { params, value }
    }

    /// The parameter the value depends on takes (nearly) all the importance; shares sum to 1.
    #[test]
    fn the_parameter_that_decides_the_value_is_the_important_one() {
        let trials: Vec<Trial> = (0..60)
            .map(|i| {
                let x = (i * 37 % 60) as f64 / 59.0;
                let c = ["a", "b", "c"][i % 3];
                trial(x, c, x * x)
            })
            .collect();
        let space = vec![
            ("x".to_string(), Distribution::Uniform(0.0, 1.0)),
            (
                "c".to_string(),
                Distribution::Choice(vec![json!("a"), json!("b"), json!("c")]),
            ),
        ];
        let got = ped_anova(&trials, &space, true).unwrap();
        assert_eq!(got.importances[0].0, "x", "{got:?}");
        assert!(got.importances[0].1 > 0.8, "{got:?}");
        let sum: f64 = got.importances.iter().map(|(_, v)| v).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert_eq!(got.target_trials, 6);
        assert!(ped_anova(&trials[..1], &space, true).is_none());
    }
}
