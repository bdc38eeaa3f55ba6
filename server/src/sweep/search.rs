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

use super::file::{SearchFile, SearchMethod};
use super::{check_value, err, Keys, SpecError, MAX_JOBS, MAX_SEED};

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

/// A validated `[search]` with method `random`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSearch {
    pub trials: i64,
    pub seed: i64,
    /// In the order written: the order of draws.
    pub space: Vec<(String, Distribution)>,
}

impl RandomSearch {
    /// The trials: `train` with one drawn value per key of the space.
    pub fn sample(&self, train: &Map<String, Value>) -> Vec<Map<String, Value>> {
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

    /// As submitted, for storage and display.
    pub fn to_file(&self) -> SearchFile {
        SearchFile {
            method: SearchMethod::Random,
            trials: Some(self.trials),
            seed: Some(self.seed),
            space: Some(self.space.iter().cloned().collect()),
        }
    }
}

fn draw(d: &Distribution, rng: &mut ChaCha8Rng) -> Value {
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
/// (trials x repeats jobs); `has_grid` says whether `[grid]` was given (a random search draws its
/// axes from `[search.space]` instead).
pub fn validate(
    file: Option<SearchFile>,
    train: &Map<String, Value>,
    has_grid: bool,
    repeats: i64,
    keys: Keys,
) -> Result<Option<RandomSearch>, SpecError> {
    let Some(file) = file else {
        return Ok(None);
    };
    if file.method == SearchMethod::Grid {
        let set = [
            ("trials", file.trials.is_some()),
            ("seed", file.seed.is_some()),
            ("space", file.space.is_some()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, given)| *given) {
            return err(
                format!("search.{k}"),
                "only for method = \"random\" (a grid's axes are in [grid])",
            );
        }
        return Ok(None);
    }
    if has_grid {
        return err(
            "grid",
            "a random search draws its values from [search.space]; leave [grid] out",
        );
    }
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
    let Some(space) = file.space else {
        return err("search.space", "missing (a table of option = distribution)");
    };
    if space.is_empty() {
        return err("search.space", "must name at least one option");
    }
    let space = space
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
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(RandomSearch {
        trials,
        seed,
        space,
    }))
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

    fn space() -> RandomSearch {
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
        let other = RandomSearch {
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
