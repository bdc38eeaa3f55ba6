//! Sweep specs: parsed at the edge into a [`SweepSpec`] that cannot be wrong, then expanded into jobs
//! by a pure function. A bad spec is rejected whole, with the offending field named.
use serde_json::{Map, Value};

mod options;
pub use options::*;

pub const MAX_JOBS: usize = 10_000;
pub const MAX_NAME: usize = 100;
pub const MAX_BODY: usize = 1 << 20;

/// Defaults of `worker train` that the coordinator needs to schedule a job, from the protocol's
/// [`protocol::JobShape`] (the worker crate's tests check these against its own defaults).
pub const DEFAULT_EPOCHS: i64 = protocol::JobShape::DEFAULT_EPOCHS;
pub const DEFAULT_BATCH_SIZE: i64 = protocol::JobShape::DEFAULT_BATCH_SIZE;
/// The trainer's default `lr` (the study's 1e-2).
pub const DEFAULT_LR: f64 = protocol::JobShape::DEFAULT_LR;
pub const DEFAULT_NPROC: i64 = protocol::JobShape::DEFAULT_NPROC;

/// The tables and keys a sweep file may have at its top level (the OpenAPI `SweepFile` documents
/// each; a test compares the two).
pub const TOP_KEYS: &[&str] = &[
    "name",
    "train",
    "grid",
    "search",
    "early_stop",
    "run",
    "command",
];

/// A rejected spec: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

pub(crate) fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, SpecError> {
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
    /// `[grid]`, or each table of `[[grid]]`: axes in the order written, the last varies fastest.
    /// The sweep's points are the union of their products.
    pub grids: Vec<Grid>,
    /// `[search] method = "random"`: the points are drawn instead (then `grids` is empty).
    pub search: Option<crate::search::RandomSearch>,
    /// `[early_stop]`: the rule that stops jobs early (grid or random search alike).
    pub early_stop: Option<crate::early_stop::EarlyStop>,
    /// `[command]`: the jobs run this program instead of `worker train` (then the keys of
    /// `[train]`, `[grid]` and `[search.space]` are the program's own parameter names).
    pub command: Option<protocol::CommandSpec>,
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
            if !TOP_KEYS.contains(&k.as_str()) {
                return err(k, format!("unknown key (expected {})", TOP_KEYS.join(", ")));
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
        let command = crate::command::parse(top.get("command"))?;
        let keys = if command.is_some() {
            Keys::Free
        } else {
            Keys::Trainer
        };
        let train = table("train")?;
        for (k, v) in &train {
            check_value(&format!("train.{k}"), k, v, keys)?;
        }
        let grids = parse_grids(top.get("grid"), &train, keys)?;
        let (max_attempts, repeats) = parse_run(&table("run")?)?;
        let search = crate::search::parse(
            top.get("search"),
            &train,
            top.contains_key("grid"),
            repeats,
            keys,
        )?;
        let early_stop = crate::early_stop::EarlyStop::parse(top.get("early_stop"))?;
        if let Some(rule) = early_stop.as_ref().filter(|_| command.is_none()) {
            // Our trainer reports the named metrics only; a rule on another would never judge.
            if !crate::early_stop::METRICS.contains(&rule.metric.as_str()) {
                return err(
                    "early_stop.metric",
                    format!(
                        "must be one of {} (a command job's own metric names are allowed in sweeps with [command])",
                        crate::early_stop::METRICS.join(", ")
                    ),
                );
            }
        }
        let points = grids
            .iter()
            .try_fold(0usize, |acc, g| acc.checked_add(grid_points(g)?))
            .and_then(|n| n.checked_mul(repeats as usize));
        if points.is_none_or(|n| n > MAX_JOBS) {
            return err(
                "grid",
                format!("more than {MAX_JOBS} jobs (grid points x repeats)"),
            );
        }
        match &search {
            Some(s) => check_search_bytes(&train, s, repeats)?,
            None => check_stored_bytes(&train, &grids, repeats)?,
        }
        let spec = SweepSpec {
            name,
            train,
            grids,
            search,
            early_stop,
            command,
            max_attempts,
            repeats,
        };
        spec.check_points_distinct()?;
        if let Some(command) = &spec.command {
            crate::command::check_placeholders(command, &spec.parameter_names())?;
        }
        Ok(spec)
    }

    /// The names every job's parameters have: `[train]`'s, those of every grid table (a name only
    /// some tables have is not one), the search space's, and `seed` when runs repeat.
    pub fn parameter_names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> = self.train.keys().cloned().collect();
        if let Some(search) = &self.search {
            names.extend(search.space.iter().map(|(k, _)| k.clone()));
        }
        let mut tables = self.grids.iter().map(|g| {
            g.iter()
                .map(|(k, _)| k.clone())
                .collect::<std::collections::BTreeSet<_>>()
        });
        if let Some(first) = tables.next() {
            names.extend(tables.fold(first, |all, t| &all & &t));
        }
        if self.repeats > 1 {
            names.insert("seed".into());
        }
        names
    }

    /// Two tables of a `[[grid]]` list may name the same point; a sweep runs each point once.
    fn check_points_distinct(&self) -> Result<(), SpecError> {
        if self.grids.len() < 2 || self.search.is_some() {
            return Ok(()); // one product of duplicate-free axes has distinct points
        }
        let mut seen = std::collections::HashSet::new();
        for point in self.points() {
            let key: Vec<(String, String)> = point
                .iter()
                .map(|(k, v)| (k.clone(), value_key(v)))
                .collect();
            if !seen.insert(key) {
                return err(
                    "grid",
                    format!(
                        "the point {} appears in more than one [[grid]] table",
                        Value::Object(point)
                    ),
                );
            }
        }
        Ok(())
    }

    /// The union of the grids' cartesian products (last axis fastest), each point merged over
    /// `train`, before repeats.
    fn points(&self) -> Vec<Map<String, Value>> {
        if let Some(search) = &self.search {
            return search.sample(&self.train);
        }
        if self.grids.is_empty() {
            return vec![self.train.clone()]; // no grid: one job with the shared settings
        }
        let mut all = vec![];
        for grid in &self.grids {
            let mut points = vec![self.train.clone()];
            for (key, values) in grid {
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
            all.extend(points);
        }
        all
    }

    /// The grid's points (the union of each `[[grid]]` table's cartesian product, in the order
    /// written, last axis fastest), each point merged over `train`, then each repeated `repeats`
    /// times with seeds seed, seed+1, ...
    pub fn expand(&self) -> Vec<Map<String, Value>> {
        let points = self.points();
        if self.repeats == 1 {
            return points;
        }
        points
            .into_iter()
            .flat_map(|p| {
                // Seeds are bounded at the edge (MAX_SEED leaves room for every repeat).
                let base = p.get("seed").and_then(Value::as_i64).unwrap_or(0);
                (0..self.repeats).map(move |r| {
                    let mut q = p.clone();
                    q.insert("seed".into(), Value::from(base.saturating_add(r)));
                    q
                })
            })
            .collect()
    }

    /// The spec in its submitted structure, for storage and display.
    pub fn to_value(&self) -> Value {
        let table = |g: &Grid| -> Value {
            Value::Object(
                g.iter()
                    .map(|(k, v)| (k.clone(), Value::Array(v.clone())))
                    .collect(),
            )
        };
        // One table stays a table (as written, and as older readers expect); several, a list.
        let grid = match self.grids.as_slice() {
            [] => Value::Object(Map::new()),
            [one] => table(one),
            many => Value::Array(many.iter().map(table).collect()),
        };
        let mut v = serde_json::json!({
            "name": self.name,
            "train": self.train,
            "grid": grid,
            "run": { "max_attempts": self.max_attempts, "repeats": self.repeats },
        });
        if let Some(search) = &self.search {
            v["search"] = search.to_value();
        }
        if let Some(rule) = &self.early_stop {
            v["early_stop"] = rule.to_value();
        }
        if let Some(command) = &self.command {
            v["command"] = serde_json::to_value(command).unwrap_or_default();
        }
        v
    }
}

/// `[run]`: (max_attempts, repeats), 3 and 1 by default.
fn parse_run(run: &Map<String, Value>) -> Result<(i64, i64), SpecError> {
    let (mut max_attempts, mut repeats) = (3, 1);
    for (k, v) in run {
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
    Ok((max_attempts, repeats))
}

/// One grid: axes in the order written.
pub type Grid = Vec<(String, Vec<Value>)>;

/// `grid` as a table (one product) or a list of tables (the union of their products).
fn parse_grids(
    v: Option<&Value>,
    train: &Map<String, Value>,
    keys: Keys,
) -> Result<Vec<Grid>, SpecError> {
    match v {
        None => Ok(vec![]),
        Some(Value::Object(m)) => Ok(vec![parse_grid("grid", m, train, keys)?]),
        Some(Value::Array(tables)) if tables.is_empty() => err("grid", "must not be an empty list"),
        Some(Value::Array(tables)) => tables
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::Object(m) => parse_grid(&format!("grid[{i}]"), m, train, keys),
                _ => err(format!("grid[{i}]"), "must be a table/object"),
            })
            .collect(),
        Some(_) => err("grid", "must be a table/object or a list of them"),
    }
}

/// One grid table. Sizes are checked before any value is looked at, so a huge axis is refused
/// from its length alone; duplicates are then found in linear time.
fn parse_grid(
    field: &str,
    m: &Map<String, Value>,
    train: &Map<String, Value>,
    keys: Keys,
) -> Result<Grid, SpecError> {
    let mut grid = Vec::new();
    for (k, axis) in m {
        let field = format!("{field}.{k}");
        if train.contains_key(k) {
            return err(field, format!("{k} is set in both [train] and [grid]"));
        }
        let Value::Array(values) = axis else {
            return err(field, "must be a list of values");
        };
        if values.is_empty() {
            return err(field, "must not be empty");
        }
        grid.push((k.clone(), values.clone()));
    }
    if grid_points(&grid).is_none_or(|n| n > MAX_JOBS) {
        return err(
            field,
            format!("more than {MAX_JOBS} jobs (grid points x repeats)"),
        );
    }
    for (k, values) in &grid {
        let mut seen = std::collections::HashSet::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let at = format!("{field}.{k}[{i}]");
            check_value(&at, k, v, keys)?;
            if !seen.insert(value_key(v)) {
                return err(at, format!("duplicate value {v}"));
            }
        }
    }
    Ok(grid)
}

/// The most a sweep's jobs may store as their params (each job keeps its full settings).
pub const MAX_STORED_BYTES: usize = 16 << 20;

/// Bounds what the jobs of a sweep store, from sizes alone, before anything is expanded: every job
/// carries `train` plus one value of each axis (the longest value of each counts).
fn check_stored_bytes(
    train: &Map<String, Value>,
    grids: &[Grid],
    repeats: i64,
) -> Result<(), SpecError> {
    let shared = Value::Object(train.clone()).to_string().len();
    let mut total = 0usize;
    for g in grids {
        let point: usize = g
            .iter()
            .map(|(k, vals)| {
                k.len() + 4 + vals.iter().map(|v| v.to_string().len()).max().unwrap_or(0)
            })
            .sum();
        total = total
            .saturating_add((shared + point).saturating_mul(grid_points(g).unwrap_or(usize::MAX)));
    }
    if grids.is_empty() {
        total = shared;
    }
    if total.saturating_mul(repeats as usize) > MAX_STORED_BYTES {
        return err(
            "train",
            format!(
                "the sweep's jobs would store about {} MiB of settings (at most {} MiB)",
                total.saturating_mul(repeats as usize) >> 20,
                MAX_STORED_BYTES >> 20
            ),
        );
    }
    Ok(())
}

/// [`check_stored_bytes`] for a random search: each trial carries `train` plus one value per key
/// (a choice's longest, or a number).
fn check_search_bytes(
    train: &Map<String, Value>,
    search: &crate::search::RandomSearch,
    repeats: i64,
) -> Result<(), SpecError> {
    use crate::search::Distribution;
    let shared = Value::Object(train.clone()).to_string().len();
    let point: usize = search
        .space
        .iter()
        .map(|(k, d)| {
            k.len()
                + 4
                + match d {
                    Distribution::Choice(v) => {
                        v.iter().map(|x| x.to_string().len()).max().unwrap_or(0)
                    }
                    _ => 24,
                }
        })
        .sum();
    let total = (shared + point).saturating_mul((search.trials * repeats) as usize);
    if total > MAX_STORED_BYTES {
        return err(
            "search.trials",
            format!(
                "the sweep's jobs would store about {} MiB of settings (at most {} MiB)",
                total >> 20,
                MAX_STORED_BYTES >> 20
            ),
        );
    }
    Ok(())
}

/// The number of points of one grid, None on overflow.
fn grid_points(g: &Grid) -> Option<usize> {
    g.iter()
        .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len()))
}

/// A key under which equal values are equal: numbers by value (1 and 1.0 are one value).
fn value_key(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("n{x:e}"),
        None => v.to_string(),
    }
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
            let grid = spec.grids.first().cloned().unwrap_or_default();
            let want: usize =
                grid.iter().map(|(_, v)| v.len()).product::<usize>() * repeats as usize;
            assert_eq!(jobs.len(), want);
            let distinct: std::collections::HashSet<String> = jobs
                .iter()
                .map(|j| Value::Object(j.clone()).to_string())
                .collect();
            assert_eq!(distinct.len(), jobs.len(), "all jobs distinct");
            assert!(jobs.iter().all(|j| j["epochs"] == 2));
            for (k, vals) in &grid {
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
