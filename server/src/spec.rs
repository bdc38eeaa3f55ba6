//! Sweep specs: parsed at the edge into a [`SweepSpec`] that cannot be wrong, then expanded into jobs
//! by a pure function. A bad spec is rejected whole, with the offending field named.
use serde_json::{Map, Value};

pub const MAX_JOBS: usize = 10_000;
pub const MAX_NAME: usize = 100;
pub const MAX_BODY: usize = 1 << 20;

/// Defaults of `worker train` that the coordinator needs to schedule a job (the worker crate's tests
/// check these against its own defaults).
pub const DEFAULT_EPOCHS: i64 = 300;
pub const DEFAULT_BATCH_SIZE: i64 = 32;
/// The trainer's default `lr` (the study's 1e-2).
pub const DEFAULT_LR: f64 = 0.01;
pub const DEFAULT_NPROC: i64 = 1;

/// The type of a `worker train` option, as a sweep may set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyType {
    /// An integer >= the bound.
    Int(i64),
    /// A finite number > 0.
    PositiveFloat,
    /// A finite number >= 0.
    NonNegativeFloat,
    Str,
    Bool,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// Strictly increasing non-negative integers.
    IncreasingInts,
    /// Exactly four positive integers.
    Widths,
}

/// Every option of `worker train` in snake_case, with its type. `--out` is the worker's to choose.
pub const TRAIN_KEYS: &[(&str, KeyType)] = &[
    ("dataset", KeyType::Choice(&["cifar10", "synthetic"])),
    ("data_dir", KeyType::Str),
    ("epochs", KeyType::Int(1)),
    ("lr", KeyType::PositiveFloat),
    ("batch_size", KeyType::Int(1)),
    ("momentum", KeyType::NonNegativeFloat),
    ("weight_decay", KeyType::NonNegativeFloat),
    ("warmup_epochs", KeyType::Int(0)),
    ("warmup_factor", KeyType::PositiveFloat),
    ("milestones", KeyType::IncreasingInts),
    ("gamma", KeyType::PositiveFloat),
    ("eval_interval", KeyType::Int(1)),
    ("eval_batch_size", KeyType::Int(1)),
    ("seed", KeyType::Int(0)),
    ("device", KeyType::Str),
    ("bf16", KeyType::Bool),
    ("fp64", KeyType::Bool),
    ("channels_last", KeyType::Bool),
    ("limit_train", KeyType::Int(1)),
    ("limit_test", KeyType::Int(1)),
    ("model_widths", KeyType::Widths),
    ("model_depth", KeyType::Int(0)),
    ("model_heads", KeyType::Int(1)),
    ("threads", KeyType::Int(1)),
    ("init_from", KeyType::Str),
    ("save_predictions", KeyType::Bool),
    ("data_url", KeyType::Str),
    ("data_md5", KeyType::Str),
    ("nproc_per_node", KeyType::Int(1)),
    ("no_sync_bn", KeyType::Bool),
    ("dist_backend", KeyType::Choice(&["gloo", "nccl"])),
    ("dist_timeout", KeyType::Int(1)),
];

/// A rejected spec: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        field: field.into(),
        message: message.into(),
    })
}

/// A validated sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub name: String,
    /// Settings every job shares.
    pub train: Map<String, Value>,
    /// Axes in the order written; the last varies fastest.
    pub grid: Vec<(String, Vec<Value>)>,
    pub max_attempts: i64,
    pub repeats: i64,
}

/// Why the input could not be read at all (400), as opposed to read and found wrong (422).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("{0}")]
    Invalid(#[from] SpecError),
}

impl SweepSpec {
    pub fn from_toml(text: &str) -> Result<Self, ParseError> {
        let v: toml::Value = toml::from_str(text).map_err(|e| ParseError::Syntax {
            format: "TOML",
            message: e.message().to_string(),
        })?;
        let json = serde_json::to_value(v).map_err(|e| ParseError::Syntax {
            format: "TOML",
            message: e.to_string(),
        })?;
        Ok(Self::from_value(&json)?)
    }

    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        Ok(Self::from_value(&v)?)
    }

    pub fn from_value(v: &Value) -> Result<Self, SpecError> {
        let Some(top) = v.as_object() else {
            return err("(root)", "a sweep is a table/object");
        };
        for k in top.keys() {
            if !["name", "train", "grid", "run"].contains(&k.as_str()) {
                return err(k, "unknown key (expected name, train, grid, run)");
            }
        }
        let name = match top.get("name") {
            Some(Value::String(s)) if s.trim().is_empty() => {
                return err("name", "must not be empty")
            }
            Some(Value::String(s)) if s.chars().count() > MAX_NAME => {
                return err("name", format!("longer than {MAX_NAME} characters"))
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return err("name", "must be a string"),
            None => return err("name", "missing"),
        };
        let table = |key: &str| -> Result<Map<String, Value>, SpecError> {
            match top.get(key) {
                None => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(_) => err(key, "must be a table/object"),
            }
        };
        let train = table("train")?;
        for (k, v) in &train {
            check_value(&format!("train.{k}"), k, v)?;
        }
        let mut grid = Vec::new();
        for (k, axis) in table("grid")? {
            let field = format!("grid.{k}");
            if train.contains_key(&k) {
                return err(field, format!("{k} is set in both [train] and [grid]"));
            }
            let Value::Array(values) = axis else {
                return err(field, "must be a list of values");
            };
            if values.is_empty() {
                return err(field, "must not be empty");
            }
            for (i, v) in values.iter().enumerate() {
                check_value(&format!("{field}[{i}]"), &k, v)?;
                if values[..i].iter().any(|w| same_value(v, w)) {
                    return err(format!("{field}[{i}]"), format!("duplicate value {v}"));
                }
            }
            grid.push((k, values));
        }
        let run = table("run")?;
        let mut max_attempts = 3;
        let mut repeats = 1;
        for (k, v) in &run {
            let field = format!("run.{k}");
            let n = v.as_i64().ok_or_else(|| SpecError {
                field: field.clone(),
                message: "must be an integer".into(),
            })?;
            match k.as_str() {
                "max_attempts" if (1..=100).contains(&n) => max_attempts = n,
                "repeats" if (1..=1000).contains(&n) => repeats = n,
                "max_attempts" => return err(field, "must be between 1 and 100"),
                "repeats" => return err(field, "must be between 1 and 1000"),
                _ => return err(field, "unknown key (expected max_attempts, repeats)"),
            }
        }
        let points = grid
            .iter()
            .try_fold(repeats as usize, |acc, (_, v)| acc.checked_mul(v.len()));
        if points.is_none_or(|n| n > MAX_JOBS) {
            return err(
                "grid",
                format!("more than {MAX_JOBS} jobs (grid points x repeats)"),
            );
        }
        Ok(SweepSpec {
            name,
            train,
            grid,
            max_attempts,
            repeats,
        })
    }

    /// The cartesian product of the grid (last axis fastest), each point merged over `train`, then
    /// each repeated `repeats` times with seeds seed, seed+1, ...
    pub fn expand(&self) -> Vec<Map<String, Value>> {
        let mut points = vec![self.train.clone()];
        for (key, values) in &self.grid {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert(key.clone(), v.clone());
                        q
                    })
                })
                .collect();
        }
        if self.repeats == 1 {
            return points;
        }
        points
            .into_iter()
            .flat_map(|p| {
                let base = p.get("seed").and_then(Value::as_i64).unwrap_or(0);
                (0..self.repeats).map(move |r| {
                    let mut q = p.clone();
                    q.insert("seed".into(), Value::from(base + r));
                    q
                })
            })
            .collect()
    }

    /// The spec in its submitted structure, for storage and display.
    pub fn to_value(&self) -> Value {
        let grid: Map<String, Value> = self
            .grid
            .iter()
            .map(|(k, v)| (k.clone(), Value::Array(v.clone())))
            .collect();
        serde_json::json!({
            "name": self.name,
            "train": self.train,
            "grid": grid,
            "run": { "max_attempts": self.max_attempts, "repeats": self.repeats },
        })
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn check_value(field: &str, key: &str, v: &Value) -> Result<(), SpecError> {
    let Some((_, ty)) = TRAIN_KEYS.iter().find(|(k, _)| *k == key) else {
        return err(field, "unknown `worker train` option");
    };
    let ok = match ty {
        KeyType::Int(min) => match v.as_i64() {
            Some(n) if n >= *min => true,
            Some(_) if *min == 1 => return err(field, "must be positive"),
            Some(_) => return err(field, format!("must be at least {min}")),
            None => return err(field, "must be an integer"),
        },
        KeyType::PositiveFloat | KeyType::NonNegativeFloat => {
            let Some(x) = v.as_f64() else {
                return err(field, "must be a number");
            };
            if !x.is_finite() {
                return err(field, "must be finite");
            }
            if *ty == KeyType::PositiveFloat && x <= 0.0 {
                return err(field, "must be positive");
            }
            x >= 0.0
        }
        KeyType::Str => v.is_string(),
        KeyType::Bool => v.is_boolean(),
        KeyType::Choice(options) => match v.as_str() {
            Some(s) if options.contains(&s) => true,
            _ => return err(field, format!("must be one of {options:?}")),
        },
        KeyType::IncreasingInts => {
            let Some(list) = v.as_array() else {
                return err(field, "must be a list of integers");
            };
            let nums: Option<Vec<i64>> = list.iter().map(Value::as_i64).collect();
            let Some(nums) = nums else {
                return err(field, "must be a list of integers");
            };
            if nums.windows(2).any(|w| w[0] >= w[1]) || nums.iter().any(|&n| n < 0) {
                return err(field, "must be strictly increasing non-negative integers");
            }
            true
        }
        KeyType::Widths => {
            let nums: Option<Vec<i64>> = v.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .filter(|&n| n > 0)
                    .collect()
            });
            matches!((nums, v.as_array()), (Some(n), Some(a)) if n.len() == 4 && a.len() == 4)
        }
    };
    if ok {
        Ok(())
    } else {
        err(field, format!("wrong type: expected {}", describe(ty)))
    }
}

fn describe(ty: &KeyType) -> &'static str {
    match ty {
        KeyType::Int(_) => "an integer",
        KeyType::PositiveFloat | KeyType::NonNegativeFloat => "a number",
        KeyType::Str => "a string",
        KeyType::Bool => "true or false",
        KeyType::Choice(_) => "one of the listed strings",
        KeyType::IncreasingInts => "a list of integers",
        KeyType::Widths => "four positive integers",
    }
}

/// What the scheduler reads from a job's settings.
pub fn job_shape(params: &Map<String, Value>) -> (i64, i64, i64) {
    let get = |k: &str, d: i64| params.get(k).and_then(Value::as_i64).unwrap_or(d);
    (
        get("batch_size", DEFAULT_BATCH_SIZE),
        get("nproc_per_node", DEFAULT_NPROC),
        get("epochs", DEFAULT_EPOCHS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Property: for random grids, the expansion has product-of-lengths x repeats jobs, all distinct,
    /// each carrying the shared settings, and every combination of axis values appears.
    #[test]
    fn expansion_is_the_cartesian_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let keys = ["lr", "batch_size", "gamma", "momentum"];
            let n_axes = rng.gen_range(0..=3);
            let mut grid = Map::new();
            for key in &keys[..n_axes] {
                let len = rng.gen_range(1..=4);
                let vals: Vec<Value> = (0..len)
                    .map(|i| {
                        if *key == "batch_size" {
                            Value::from(1 << i)
                        } else {
                            Value::from(0.1 * (i + 1) as f64)
                        }
                    })
                    .collect();
                grid.insert(key.to_string(), Value::Array(vals));
            }
            let repeats = rng.gen_range(1..=3);
            let v = serde_json::json!({"name": "p", "train": {"epochs": 2}, "grid": grid, "run": {"repeats": repeats}});
            let spec = SweepSpec::from_value(&v).unwrap();
            let jobs = spec.expand();
            let want: usize =
                spec.grid.iter().map(|(_, v)| v.len()).product::<usize>() * repeats as usize;
            assert_eq!(jobs.len(), want);
            let distinct: std::collections::HashSet<String> = jobs
                .iter()
                .map(|j| Value::Object(j.clone()).to_string())
                .collect();
            assert_eq!(distinct.len(), jobs.len(), "all jobs distinct");
            assert!(jobs.iter().all(|j| j["epochs"] == 2));
            for (k, vals) in &spec.grid {
                for val in vals {
                    assert_eq!(
                        jobs.iter().filter(|j| &j[k] == val).count(),
                        jobs.len() / vals.len()
                    );
                }
            }
        }
    }
}
