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

use crate::spec::{check_value, err, Keys, SpecError, MAX_JOBS, MAX_SEED};

/// Where one option's values come from.
#[derive(Debug, Clone, PartialEq)]
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
    pub fn to_value(&self) -> Value {
        let space: Map<String, Value> = self
            .space
            .iter()
            .map(|(k, d)| {
                let v = match d {
                    Distribution::LogUniform(a, b) => serde_json::json!({ "log_uniform": [a, b] }),
                    Distribution::Uniform(a, b) => serde_json::json!({ "uniform": [a, b] }),
                    Distribution::Int(a, b) => serde_json::json!({ "int": [a, b] }),
                    Distribution::Choice(v) => serde_json::json!({ "choice": v }),
                };
                (k.clone(), v)
            })
            .collect();
        serde_json::json!({"method": "random", "trials": self.trials, "seed": self.seed, "space": space})
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

/// Parses `[search]`. None: the grid (absent, or `method = "grid"`). `repeats` bounds the trials
/// (trials x repeats jobs); `has_grid` says whether `[grid]` was given (a random search draws its
/// axes from `[search.space]` instead).
pub fn parse(
    v: Option<&Value>,
    train: &Map<String, Value>,
    has_grid: bool,
    repeats: i64,
    keys: Keys,
) -> Result<Option<RandomSearch>, SpecError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let Some(t) = v.as_object() else {
        return err("search", "must be a table/object");
    };
    for k in t.keys() {
        if !["method", "trials", "seed", "space"].contains(&k.as_str()) {
            return err(
                format!("search.{k}"),
                "unknown key (expected method, trials, seed, space)",
            );
        }
    }
    match t.get("method").and_then(Value::as_str) {
        Some("grid") => {
            if let Some(k) = ["trials", "seed", "space"]
                .iter()
                .find(|k| t.contains_key(**k))
            {
                return err(
                    format!("search.{k}"),
                    "only for method = \"random\" (a grid's axes are in [grid])",
                );
            }
            return Ok(None);
        }
        Some("random") => {}
        _ => return err("search.method", "must be \"grid\" or \"random\""),
    }
    if has_grid {
        return err(
            "grid",
            "a random search draws its values from [search.space]; leave [grid] out",
        );
    }
    let trials = match t.get("trials").map(Value::as_i64) {
        None => return err("search.trials", "missing"),
        Some(Some(n)) if n >= 1 && n.saturating_mul(repeats) <= MAX_JOBS as i64 => n,
        Some(Some(_)) => {
            return err(
                "search.trials",
                format!("must be at least 1, and trials x repeats at most {MAX_JOBS}"),
            )
        }
        Some(None) => return err("search.trials", "must be an integer"),
    };
    let seed = match t.get("seed").map(Value::as_i64) {
        None => 0,
        Some(Some(n)) if (0..=MAX_SEED).contains(&n) => n,
        Some(_) => {
            return err(
                "search.seed",
                format!("must be an integer from 0 to {MAX_SEED}"),
            )
        }
    };
    let Some(space) = t.get("space").and_then(Value::as_object) else {
        return err("search.space", "missing (a table of option = distribution)");
    };
    if space.is_empty() {
        return err("search.space", "must name at least one option");
    }
    let space = space
        .iter()
        .map(|(k, d)| {
            let field = format!("search.space.{k}");
            if train.contains_key(k) {
                return err(
                    field,
                    format!("{k} is set in both [train] and [search.space]"),
                );
            }
            Ok((k.clone(), distribution(&field, k, d, keys)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(RandomSearch {
        trials,
        seed,
        space,
    }))
}

/// One `{ kind = [...] }`, checked against the option it draws for: both bounds (or every choice)
/// must be values the option accepts, so every draw is too.
fn distribution(field: &str, key: &str, v: &Value, keys: Keys) -> Result<Distribution, SpecError> {
    let Some((kind, args)) = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return err(
            field,
            "must be one of { log_uniform = [lo, hi] }, { uniform = [lo, hi] }, { int = [lo, hi] }, { choice = [...] }",
        );
    };
    let Some(args) = args.as_array() else {
        return err(format!("{field}.{kind}"), "must be a list");
    };
    let at = format!("{field}.{kind}");
    let pair = |f: fn(&Value) -> Option<f64>| -> Result<(f64, f64), SpecError> {
        match args.as_slice() {
            [a, b] => match (f(a), f(b)) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() && a < b => Ok((a, b)),
                (Some(_), Some(_)) => err(&at, "must be [lo, hi] with lo < hi"),
                _ => err(&at, "must be two numbers"),
            },
            _ => err(&at, "must be [lo, hi]"),
        }
    };
    let d = match kind.as_str() {
        "log_uniform" => {
            let (lo, hi) = pair(Value::as_f64)?;
            if lo <= 0.0 {
                return err(&at, "lo must be positive (a log scale)");
            }
            Distribution::LogUniform(lo, hi)
        }
        "uniform" => {
            let (lo, hi) = pair(Value::as_f64)?;
            Distribution::Uniform(lo, hi)
        }
        "int" => match args.as_slice() {
            [a, b] => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) if a <= b => Distribution::Int(a, b),
                (Some(_), Some(_)) => return err(&at, "must be [lo, hi] with lo <= hi"),
                _ => return err(&at, "must be two integers"),
            },
            _ => return err(&at, "must be [lo, hi]"),
        },
        "choice" => {
            if args.is_empty() {
                return err(&at, "must list at least one value");
            }
            if args.len() > MAX_JOBS {
                return err(&at, format!("at most {MAX_JOBS} values"));
            }
            for (i, x) in args.iter().enumerate() {
                check_value(&format!("{at}[{i}]"), key, x, keys)?;
            }
            return Ok(Distribution::Choice(args.clone()));
        }
        other => {
            return err(
                field,
                format!("unknown distribution {other:?} (log_uniform, uniform, int, choice)"),
            )
        }
    };
    // Both ends must be values the option accepts (an int range for an integer option, a float
    // range for a float one): then every draw is.
    let (lo, hi) = match &d {
        Distribution::LogUniform(a, b) | Distribution::Uniform(a, b) => {
            (Value::from(*a), Value::from(*b))
        }
        Distribution::Int(a, b) => (Value::from(*a), Value::from(*b)),
        Distribution::Choice(_) => unreachable!("returned above"),
    };
    check_value(&format!("{at}[0]"), key, &lo, keys)?;
    check_value(&format!("{at}[1]"), key, &hi, keys)?;
    Ok(d)
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
        parse(Some(&v), &Map::new(), false, 1, crate::spec::Keys::Trainer)
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
