//! Early stopping decided by the coordinator: `[early_stop]` in a sweep (grid or random search).
//! The coordinator holds every epoch's metrics, so it judges a job when its epoch arrives; the answer
//! to that report, and every heartbeat after it, carry `stop`, and the job ends `pruned`.
//!
//! The rules are Optuna's, decision for decision, so users can reason about them with Optuna's
//! documentation and the tests can check them against Optuna itself (`server/tests/api/early_stop.rs`):
//! - `asha`: `SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta,
//!   min_early_stopping_rate=0)`. Rungs at epochs `min_epochs * eta^k`. A job reaching a rung
//!   records its value there (once); it goes on only if that value is within the top
//!   `floor(n / eta)` of the n values recorded at that rung so far by the sweep's jobs, whatever
//!   their state, itself included (the best one when that floor is 0); ties with the cut-off go on.
//!   One report may pass several rungs (a job that did not report at a rung's epoch).
//! - `median`: `MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=min_epochs)`. No stop
//!   before `startup_trials` jobs of the sweep have *completed* (at least one), nor before epoch
//!   `min_epochs`; then a job stops when its best value so far is worse than the median of the
//!   completed jobs' values at the same epoch (none there: no stop).
//!
//! - `hyperband`: `HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs,
//!   reduction_factor=eta)`. `floor(log_eta(max / min)) + 1` brackets; bracket b is successive
//!   halving with `min_early_stopping_rate = b` (rungs at `min_epochs * eta^(b + k)`), comparing
//!   only the jobs of its own bracket. A job's bracket is Optuna's draw: the CRC-32 of
//!   `"{sweep name}_{job index}"` (Optuna's study name and trial number) modulo the brackets' total
//!   budget, bracket b's budget being `ceil(n * eta^(n-1-b) / (n-b))`. `max_epochs = "auto"` is
//!   Optuna's: nothing is judged (or recorded at a rung) until a job of the sweep has completed,
//!   then the maximum is the largest last epoch of the completed jobs + 1, fixed for good (kept in
//!   the sweep's row, so a restart does not change it). Absent, it is the judged job's `epochs`.
//!
//! Two choices of ours where Optuna has no counterpart: a report without the metric (an epoch
//! without evaluation, or a diverged one, whose loss is NaN) is not judged; and diverged jobs are
//! never compared with (they ended themselves; a NaN would make every comparison meaningless).
//!
//! The decision costs O(log n) in the jobs compared: the values at a rung, and the completed jobs'
//! values at an epoch, are kept ordered in memory beside SQLite (`store/ranks.rs`).
use serde_json::Value;

use super::file::{EarlyStopFile, EarlyStopMethod, MaxEpochsFile};
use super::{err, SpecError};

/// Whether larger or smaller values of the metric are better.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Max,
    Min,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Min => "min",
        }
    }

    /// The natural direction of a metric: losses and times down, the rest up.
    pub fn default_for(metric: &str) -> Mode {
        if metric.ends_with("loss") || metric == "seconds" {
            Mode::Min
        } else {
            Mode::Max
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Asynchronous successive halving.
    Asha { reduction_factor: i64 },
    /// The median rule.
    Median { startup_trials: i64 },
    /// Hyperband: successive halving in brackets.
    Hyperband {
        reduction_factor: i64,
        max_epochs: MaxEpochs,
    },
}

/// Hyperband's largest resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxEpochs {
    /// Each job's own `epochs` (the default).
    Jobs,
    Fixed(i64),
    /// Optuna's "auto": from the first completed jobs.
    Auto,
}

/// A validated `[early_stop]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyStop {
    pub method: Method,
    /// One of [`METRICS`].
    pub metric: String,
    pub mode: Mode,
    /// ASHA: the first rung's epoch (r); median: the warm-up epochs before any stop.
    pub min_epochs: i64,
}

impl EarlyStop {
    /// Checks `[early_stop]`; absent: None (every job runs to its end).
    pub fn validate(file: Option<EarlyStopFile>) -> Result<Option<Self>, SpecError> {
        let Some(file) = file else {
            return Ok(None);
        };
        let metric = match file.metric {
            None => "accuracy".to_string(),
            Some(m) if protocol::is_metric_name(&m) => m,
            Some(_) => {
                return err(
                    "early_stop.metric",
                    format!(
                        "must name a reported metric: one of {}, or a metric of a command's own (letters, digits, _ . - /)",
                        protocol::named_metric_names().join(", ")
                    ),
                )
            }
        };
        let mode = file.mode.unwrap_or_else(|| Mode::default_for(&metric));
        let min_epochs = int("min_epochs", file.min_epochs, 1, 1, super::MAX_EPOCHS)?;
        let eta = || int("reduction_factor", file.reduction_factor, 3, 2, 1000);
        let method = match file.method {
            EarlyStopMethod::Asha => {
                only_for("startup_trials", file.startup_trials.is_some(), "median")?;
                only_for("max_epochs", file.max_epochs.is_some(), "hyperband")?;
                Method::Asha {
                    reduction_factor: eta()?,
                }
            }
            EarlyStopMethod::Hyperband => {
                only_for("startup_trials", file.startup_trials.is_some(), "median")?;
                Method::Hyperband {
                    reduction_factor: eta()?,
                    max_epochs: max_epochs(file.max_epochs.clone(), min_epochs)?,
                }
            }
            EarlyStopMethod::Median => {
                let said = file.reduction_factor.is_some();
                only_for("reduction_factor", said, "asha\" or \"hyperband")?;
                only_for("max_epochs", file.max_epochs.is_some(), "hyperband")?;
                Method::Median {
                    startup_trials: int(
                        "startup_trials",
                        file.startup_trials,
                        5,
                        0,
                        super::MAX_JOBS as i64,
                    )?,
                }
            }
        };
        Ok(Some(EarlyStop {
            method,
            metric,
            mode,
            min_epochs,
        }))
    }

    /// As stored and shown (every default filled in).
    pub fn to_file(&self) -> EarlyStopFile {
        let (method, reduction_factor, startup_trials, max_epochs) = match self.method {
            Method::Asha { reduction_factor } => {
                (EarlyStopMethod::Asha, Some(reduction_factor), None, None)
            }
            Method::Median { startup_trials } => {
                (EarlyStopMethod::Median, None, Some(startup_trials), None)
            }
            Method::Hyperband {
                reduction_factor,
                max_epochs,
            } => (
                EarlyStopMethod::Hyperband,
                Some(reduction_factor),
                None,
                match max_epochs {
                    MaxEpochs::Jobs => None,
                    MaxEpochs::Fixed(n) => Some(MaxEpochsFile::Epochs(n)),
                    MaxEpochs::Auto => Some(MaxEpochsFile::Word("auto".into())),
                },
            ),
        };
        EarlyStopFile {
            method,
            metric: Some(self.metric.clone()),
            mode: Some(self.mode),
            min_epochs: Some(self.min_epochs),
            reduction_factor,
            startup_trials,
            max_epochs,
        }
    }

    /// A rule in its JSON form (as stored), read and checked as a sweep file's `early_stop`.
    pub fn from_value(v: Value) -> Result<Option<Self>, SpecError> {
        let wrapped = serde_json::json!({"name": "-", "early_stop": v});
        Self::validate(super::file::SweepFile::from_value(wrapped)?.early_stop)
    }

    /// The stored form back (written from [`Self::to_file`]); a row that does not read is an error,
    /// never a sweep without its rule.
    pub fn from_stored(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text)?;
        Self::from_value(v)
            .map_err(|e| anyhow::anyhow!("the stored early-stopping rule: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("the stored early-stopping rule is empty"))
    }

    /// ASHA's rung `k` is reached at epoch `min_epochs * eta^k`, a Hyperband bracket's at
    /// `min_epochs * eta^(bracket + k)` (None past any epoch a job can have).
    pub fn rung_epoch(&self, rung: u32, bracket: u32) -> Option<i64> {
        match self.method {
            Method::Asha { reduction_factor }
            | Method::Hyperband {
                reduction_factor, ..
            } => reduction_factor
                .checked_pow(rung.checked_add(bracket)?)
                .and_then(|p| p.checked_mul(self.min_epochs)),
            Method::Median { .. } => None,
        }
    }

    /// `a` is strictly better than `b`.
    fn better(&self, a: f64, b: f64) -> bool {
        match self.mode {
            Mode::Max => a > b,
            Mode::Min => a < b,
        }
    }
}

fn int(key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64, SpecError> {
    match v {
        None => Ok(default),
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        Some(_) => err(
            format!("early_stop.{key}"),
            format!("must be an integer in {lo}..={hi}"),
        ),
    }
}

fn max_epochs(v: Option<MaxEpochsFile>, min_epochs: i64) -> Result<MaxEpochs, SpecError> {
    match v {
        None => Ok(MaxEpochs::Jobs),
        Some(MaxEpochsFile::Word(w)) if w == "auto" => Ok(MaxEpochs::Auto),
        Some(MaxEpochsFile::Epochs(n)) if (min_epochs..=super::MAX_EPOCHS).contains(&n) => {
            Ok(MaxEpochs::Fixed(n))
        }
        Some(_) => err(
            "early_stop.max_epochs",
            format!(
                "must be \"auto\" or an integer in {min_epochs}..={} (at least min_epochs)",
                super::MAX_EPOCHS
            ),
        ),
    }
}

/// Hyperband's brackets as Optuna sizes them for a largest resource `max`: their number,
/// `floor(log_eta(max / min)) + 1` computed in floating point as Python's `math.log(x, base)` does
/// (none when `max < min`: nothing is ever stopped, as in Optuna), and each one's budget,
/// `ceil(n * eta^s / (s + 1))` with `s = n - 1 - b`.
pub fn bracket_budgets(min: i64, max: i64, eta: i64) -> Vec<i64> {
    let ratio = max as f64 / min as f64;
    let n = (ratio.ln() / (eta as f64).ln()).floor() + 1.0;
    // NaN (a ratio that is not a number) and fewer than one bracket alike: none.
    if n.is_nan() || n < 1.0 {
        return vec![];
    }
    let n = n as i64;
    (0..n)
        .map(|b| {
            let s = n - 1 - b;
            let top = n.saturating_mul(eta.saturating_pow(s as u32));
            (top + s) / (s + 1)
        })
        .collect()
}

/// A job's bracket: Optuna's `crc32("{study_name}_{trial_number}") % total budget`, walked through
/// the brackets' budgets in order. None without brackets.
pub fn bracket_of(sweep_name: &str, index: i64, budgets: &[i64]) -> Option<u32> {
    let total: i64 = budgets.iter().sum();
    if total <= 0 {
        return None;
    }
    let mut n = i64::from(crc32fast::hash(format!("{sweep_name}_{index}").as_bytes())) % total;
    for (b, budget) in budgets.iter().enumerate() {
        n -= budget;
        if n < 0 {
            return Some(b as u32);
        }
    }
    None
}

/// A key given (`said`) that only `method` reads is refused, naming it.
fn only_for(key: &str, said: bool, method: &str) -> Result<(), SpecError> {
    if said {
        return err(
            format!("early_stop.{key}"),
            format!("only for method = \"{method}\""),
        );
    }
    Ok(())
}

/// ASHA at one rung, from counts (Optuna's `_is_trial_promotable_to_next_rung`: the top
/// `floor(n / eta)`, at least the best one): of `n` values at the rung (the job's included), `better`
/// are strictly better than the job's. Its value is at least the `keep`-th best exactly when fewer
/// than `keep` values beat it.
pub fn goes_on(n: usize, better: usize, eta: i64) -> bool {
    let keep = (n / eta.max(1) as usize).max(1);
    better < keep
}

/// The median rule's threshold: NumPy's `nanpercentile(values, 50)` (linear interpolation, NaN
/// and missing values ignored); None when no value is left.
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|x| !x.is_nan())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The median rule at one epoch: stop when the job's best value so far is worse than the median.
pub fn below_median(rule: &EarlyStop, best_so_far: f64, threshold: f64) -> bool {
    rule.better(threshold, best_so_far)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`goes_on`] from the list of values at the rung (the job's included), as Optuna states it.
    fn promotable(rule: &EarlyStop, value: f64, competing: &[f64], eta: i64) -> bool {
        let better = competing.iter().filter(|&&c| rule.better(c, value)).count();
        goes_on(competing.len(), better, eta)
    }

    fn rule(v: Value) -> EarlyStop {
        EarlyStop::from_value(v).unwrap().unwrap()
    }

    #[test]
    fn defaults_follow_the_metric_and_optuna() {
        let r = rule(serde_json::json!({"method": "hyperband", "max_epochs": "auto"}));
        assert_eq!(
            r.method,
            Method::Hyperband {
                reduction_factor: 3,
                max_epochs: MaxEpochs::Auto
            }
        );
        let stored = serde_json::to_string(&r.to_file()).unwrap();
        assert_eq!(EarlyStop::from_stored(&stored).unwrap(), r);
        let r = rule(serde_json::json!({"method": "asha"}));
        assert_eq!(r.metric, "accuracy");
        assert_eq!(r.mode, Mode::Max);
        assert_eq!(
            r.method,
            Method::Asha {
                reduction_factor: 3
            }
        );
        let r = rule(serde_json::json!({"method": "median", "metric": "test_loss"}));
        assert_eq!(r.mode, Mode::Min);
        assert_eq!(r.method, Method::Median { startup_trials: 5 });
        let stored = serde_json::to_string(&r.to_file()).unwrap();
        assert_eq!(EarlyStop::from_stored(&stored).unwrap(), r);
    }

    #[test]
    fn bad_rules_name_their_field() {
        for (v, field) in [
            (
                serde_json::json!({"method": "hyperbands"}),
                "early_stop.method",
            ),
            (
                serde_json::json!({"method": "hyperband", "max_epochs": "many"}),
                "early_stop.max_epochs",
            ),
            (
                serde_json::json!({"method": "hyperband", "min_epochs": 3, "max_epochs": 2}),
                "early_stop.max_epochs",
            ),
            (
                serde_json::json!({"method": "asha", "max_epochs": 9}),
                "early_stop.max_epochs",
            ),
            (
                serde_json::json!({"method": "hyperband", "startup_trials": 2}),
                "early_stop.startup_trials",
            ),
            (
                serde_json::json!({"method": "asha", "metric": "val acc"}),
                "early_stop.metric",
            ),
            (
                serde_json::json!({"method": "asha", "mode": "up"}),
                "early_stop.mode",
            ),
            (
                serde_json::json!({"method": "asha", "reduction_factor": 1}),
                "early_stop.reduction_factor",
            ),
            (
                serde_json::json!({"method": "asha", "min_epochs": 0}),
                "early_stop.min_epochs",
            ),
            (
                serde_json::json!({"method": "asha", "startup_trials": 2}),
                "early_stop.startup_trials",
            ),
            (
                serde_json::json!({"method": "median", "reduction_factor": 2}),
                "early_stop.reduction_factor",
            ),
            (
                serde_json::json!({"method": "median", "patience": 2}),
                "early_stop.patience",
            ),
            (serde_json::json!(3), "early_stop"),
        ] {
            assert_eq!(
                EarlyStop::from_value(v.clone()).unwrap_err().field,
                field,
                "{v}"
            );
        }
    }

    #[test]
    fn rungs_grow_by_eta_and_never_overflow() {
        let r = rule(serde_json::json!({"method": "asha", "min_epochs": 2, "reduction_factor": 3}));
        assert_eq!(
            (0..4)
                .map(|k| r.rung_epoch(k, 0).unwrap())
                .collect::<Vec<_>>(),
            [2, 6, 18, 54]
        );
        assert_eq!(r.rung_epoch(1, 2), Some(54));
        assert_eq!(r.rung_epoch(80, 0), None);
    }

    #[test]
    fn hyperband_brackets_are_optunas() {
        // Optuna 5.0, HyperbandPruner(min_resource=1, max_resource=27/81/10, reduction_factor=3):
        // _trial_allocation_budgets.
        assert_eq!(bracket_budgets(1, 27, 3), [27, 12, 6, 4]);
        assert_eq!(bracket_budgets(1, 81, 3), [81, 34, 15, 8, 5]);
        assert_eq!(bracket_budgets(1, 10, 3), [9, 5, 3]);
        assert_eq!(bracket_budgets(1, 1, 3), [1]);
        assert!(bracket_budgets(4, 3, 3).is_empty());
        // Python's binascii.crc32(b"study_0") (the standard CRC-32).
        assert_eq!(crc32fast::hash(b"study_0"), 368_277_276);
        let b = bracket_budgets(1, 27, 3);
        let picks: Vec<u32> = (0..200).filter_map(|i| bracket_of("s", i, &b)).collect();
        assert_eq!(picks.len(), 200);
        assert!((0..4).all(|k| picks.contains(&k)), "{picks:?}");
    }

    #[test]
    fn promotion_keeps_the_top_fraction_ties_included() {
        let max = rule(serde_json::json!({"method": "asha", "mode": "max"}));
        // Fewer than eta values: only the best goes on (a tie with it too).
        assert!(promotable(&max, 0.5, &[0.5], 3));
        assert!(!promotable(&max, 0.4, &[0.5, 0.4], 3));
        assert!(promotable(&max, 0.5, &[0.5, 0.5], 3));
        // Six values, eta 3: the top two.
        let six = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        assert!(promotable(&max, 0.5, &six, 3));
        assert!(!promotable(&max, 0.4, &six, 3));
        let min = rule(serde_json::json!({"method": "asha", "metric": "test_loss"}));
        assert!(promotable(&min, 0.2, &six, 3));
        assert!(!promotable(&min, 0.3, &six, 3));
    }

    #[test]
    fn the_median_is_numpys() {
        assert_eq!(
            median(&[Some(3.0), None, Some(1.0), Some(f64::NAN)]),
            Some(2.0)
        );
        assert_eq!(median(&[Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[None]), None);
    }
}
