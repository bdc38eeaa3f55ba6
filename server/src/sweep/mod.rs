//! Sweep specs: parsed at the edge into a [`SweepSpec`] that cannot be wrong, then expanded into jobs
//! by a pure function. A bad spec is rejected whole, with the offending field named.
pub mod command;
pub mod early_stop;
pub mod nsga2;
pub mod objectives;
pub mod pareto;
pub mod pbt;
pub mod search;
pub mod tpe;

use serde_json::{Map, Value};

mod file;
mod options;
pub use file::*;
pub use options::*;

/// Most jobs one sweep may have (grid points x repeats, or trials x repeats).
pub const MAX_JOBS: usize = 100_000;
/// Most jobs one read lists inline (`GET /api/sweeps/{id}?limit=`); larger sweeps are paged.
pub const MAX_JOBS_INLINE: usize = 10_000;
pub const MAX_NAME: usize = 100;
pub const MAX_BODY: usize = 1 << 20;

/// Defaults of `worker train` that the coordinator needs to schedule a job, from the protocol's
/// [`protocol::JobShape`] (the worker crate's tests check these against its own defaults).
pub const DEFAULT_EPOCHS: i64 = protocol::JobShape::DEFAULT_EPOCHS;
pub const DEFAULT_BATCH_SIZE: i64 = protocol::JobShape::DEFAULT_BATCH_SIZE;
/// The trainer's default `lr` (the study's 1e-2).
pub const DEFAULT_LR: f64 = protocol::JobShape::DEFAULT_LR;
pub const DEFAULT_NPROC: i64 = protocol::JobShape::DEFAULT_NPROC;

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
    pub search: Option<search::Search>,
    /// `[early_stop]`: the rule that stops jobs early (grid or random search alike).
    pub early_stop: Option<early_stop::EarlyStop>,
    /// `[command]`: the jobs run this program instead of `worker train` (then the keys of
    /// `[train]`, `[grid]` and `[search.space]` are the program's own parameter names).
    pub command: Option<protocol::CommandSpec>,
    pub max_attempts: i64,
    pub repeats: i64,
    /// `[run] external = true`: the caller's own loop asks for the trials and tells their values;
    /// no worker claims them.
    pub external: bool,
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
        Ok(SweepFile::from_value(json)?.validate()?)
    }

    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        Ok(SweepFile::from_value(v)?.validate()?)
    }

    /// A stored spec (validated whole when it was submitted): its fields read and checked again,
    /// its points not multiplied out again (on a 100,000-job grid that costs tens of MB and a
    /// good part of a second, on every analysis request and export).
    pub fn from_value(v: &Value) -> Result<Self, SpecError> {
        SweepFile::from_value(v.clone())?.validate_fields()
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

    /// Every job's options together as `worker train` will check them (the heads divide the last
    /// width, ...): a job the trainer would refuse is refused here, before it exists.
    fn check_combinations(&self, points: &[Map<String, Value>]) -> Result<(), SpecError> {
        for point in points {
            if let Err((key, why)) = protocol::train::check_combination(point) {
                let in_space = self
                    .search
                    .as_ref()
                    .is_some_and(|s| s.space.iter().any(|(k, _)| k == key));
                let field = match (self.train.contains_key(key), in_space) {
                    (true, _) => format!("train.{key}"),
                    (false, true) => format!("search.space.{key}"),
                    (false, false) => "grid".to_string(),
                };
                return err(
                    field,
                    format!("{why} (in the point {})", Value::Object(point.clone())),
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

    /// What the file may not mean as written: said beside the new sweep, never refused.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = vec![];
        if self.search.is_none()
            && self.grids.is_empty()
            && self.command.is_none()
            && !self.external
        {
            let data = match self.train.get("dataset").and_then(Value::as_str) {
                Some("synthetic") => "synthetic data",
                _ => "CIFAR-10's 50,000 training images unless [train] limits them",
            };
            w.push(format!(
                "no [grid] and no [search]: this sweep is {} job(s) of [train]'s settings alone \
                 (the study's full network on {data}); a [grid] table lists the values to sweep",
                self.repeats
            ));
        }
        if self.command.is_some() {
            w.push(
                "a command sweep: only workers started with `worker run --allow-commands` take its \
                 jobs"
                    .into(),
            );
        }
        if self.external {
            w.push(
                "an external sweep: no worker runs its trials; your own loop asks for them and \
                 tells their values (POST /api/sweeps/ID/ask and /tell, or seed_sweeps' ask, tell \
                 and optimize)"
                    .into(),
            );
        }
        w
    }

    /// A submit with `?dry_run=true`: the jobs this spec makes (a TPE sweep's are drawn as it
    /// runs: their count only), nothing stored.
    pub fn dry_run(&self) -> protocol::views::DryRun {
        const LISTED: usize = 1000;
        let jobs = self.expand();
        let count = match &self.search {
            Some(s) => s.trials as usize,
            None => jobs.len(),
        };
        let (varying, _) = split_keys(&jobs.iter().collect::<Vec<_>>());
        protocol::views::DryRun {
            name: self.name.clone(),
            jobs: count,
            varying,
            params: jobs.into_iter().take(LISTED).map(Value::Object).collect(),
            warnings: self.warnings(),
        }
    }

    /// The spec in the file's own shape, every default filled in: what is stored and shown.
    pub fn to_file(&self) -> SweepFile {
        let table = |g: &Grid| -> Map<String, Value> {
            g.iter()
                .map(|(k, v)| (k.clone(), Value::Array(v.clone())))
                .collect()
        };
        // One table stays a table (as written, and as older readers expect); several, a list.
        let grid = match self.grids.as_slice() {
            [] => None,
            [one] => Some(GridFile::One(table(one))),
            many => Some(GridFile::Many(many.iter().map(table).collect())),
        };
        SweepFile {
            name: self.name.clone(),
            train: self.train.clone(),
            grid,
            search: self.search.as_ref().map(|s| s.to_file()),
            early_stop: self.early_stop.as_ref().map(|r| r.to_file()),
            run: Some(RunFile {
                max_attempts: Some(self.max_attempts),
                repeats: Some(self.repeats),
                external: self.external.then_some(true),
            }),
            command: self.command.clone(),
        }
    }

    /// [`Self::to_file`] as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.to_file()).expect("a sweep file is plain data")
    }
}

impl SweepFile {
    /// Everything the file's types cannot say, checked in the order a reader would look, cheapest
    /// signals first (sizes before values): the result is a sweep that cannot be wrong.
    pub fn validate(self) -> Result<SweepSpec, SpecError> {
        let spec = self.validate_fields()?;
        spec.check_points()?;
        Ok(spec)
    }

    /// Every check but those on the sweep's points (all of a file's fields).
    fn validate_fields(self) -> Result<SweepSpec, SpecError> {
        let name = self.name;
        if name.trim().is_empty() {
            return err("name", "must not be empty");
        }
        if name.chars().count() > MAX_NAME {
            return err("name", format!("longer than {MAX_NAME} characters"));
        }
        let command = command::validate(self.command)?;
        let external = self.run.is_some_and(|r| r.external == Some(true));
        if external && command.is_some() {
            return err(
                "run.external",
                "an external sweep's trials run in your own loop, not as a program: drop [command] or external",
            );
        }
        let keys = if command.is_some() || external {
            Keys::Free
        } else {
            Keys::Trainer
        };
        let train = self.train;
        for (k, v) in &train {
            check_value(&format!("train.{k}"), k, v, keys)?;
        }
        let has_grid = self.grid.is_some();
        let grids = check_grids(self.grid, &train, keys)?;
        let (max_attempts, repeats) = check_run(self.run)?;
        let search = search::validate(self.search, &train, has_grid, repeats, keys)?;
        let several = search.as_ref().is_some_and(|s| s.objectives.len() > 1);
        if several && self.early_stop.as_ref().is_some_and(|r| r.metric.is_none()) {
            // Optuna refuses pruning with several objectives; a rule must say what it judges.
            return err(
                "early_stop.metric",
                "a search with several objectives stops jobs on one metric only: name it",
            );
        }
        let early_stop = early_stop::EarlyStop::validate(self.early_stop)?;
        if search.as_ref().is_some_and(|s| s.pbt.is_some()) {
            if early_stop.is_some() {
                return err(
                    "early_stop",
                    "not with method = \"pbt\": its members are never stopped early, the bottom \
                     ones copy the top ones",
                );
            }
            if external {
                return err(
                    "run.external",
                    "not with method = \"pbt\": the coordinator moves its members between \
                     checkpoints, which an outside loop's trials do not have",
                );
            }
        }
        if let Some(rule) = early_stop
            .as_ref()
            .filter(|_| command.is_none() && !external)
        {
            // Our trainer reports the named metrics only; a rule on another would never judge.
            if !protocol::is_named_metric(&rule.metric) {
                return err(
                    "early_stop.metric",
                    format!(
                        "must be one of {} (a command job's own metric names are allowed in sweeps with [command])",
                        protocol::named_metric_names().join(", ")
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
        Ok(SweepSpec {
            name,
            train,
            grids,
            search,
            early_stop,
            command,
            max_attempts,
            repeats,
            external,
        })
    }
}

impl SweepSpec {
    /// The checks on a sweep's points, drawn or multiplied out once: distinct across `[[grid]]`
    /// tables, each a combination the trainer runs, a command's placeholders all named.
    fn check_points(&self) -> Result<(), SpecError> {
        let several_tables = self.grids.len() > 1 && self.search.is_none();
        let trainer = self.command.is_none() && !self.external;
        let mut points = match several_tables || trainer {
            true => self.points(),
            false => vec![],
        };
        if let Some(s) = self
            .search
            .as_ref()
            .filter(|s| s.model.is_some() && trainer)
        {
            points.extend(s.rule_points(&self.train));
        }
        if several_tables {
            check_points_distinct(&points)?;
        }
        match &self.command {
            Some(command) => command::check_placeholders(command, &self.parameter_names()),
            None if self.external => Ok(()),
            None => self.check_combinations(&points),
        }
    }
}

/// Two tables of a `[[grid]]` list may name the same point; a sweep runs each point once.
fn check_points_distinct(points: &[Map<String, Value>]) -> Result<(), SpecError> {
    let mut seen = std::collections::HashSet::new();
    for point in points {
        let key: Vec<(String, String)> = point
            .iter()
            .map(|(k, v)| (k.clone(), value_key(v)))
            .collect();
        if !seen.insert(key) {
            return err(
                "grid",
                format!(
                    "the point {} appears in more than one [[grid]] table",
                    Value::Object(point.clone())
                ),
            );
        }
    }
    Ok(())
}

/// `[run]`: (max_attempts, repeats), 3 and 1 by default.
fn check_run(run: Option<RunFile>) -> Result<(i64, i64), SpecError> {
    let run = run.unwrap_or(RunFile {
        max_attempts: None,
        repeats: None,
        external: None,
    });
    let max_attempts = run.max_attempts.unwrap_or(3);
    if !(1..=100).contains(&max_attempts) {
        return err("run.max_attempts", "must be between 1 and 100");
    }
    let repeats = run.repeats.unwrap_or(1);
    if !(1..=1000).contains(&repeats) {
        return err("run.repeats", "must be between 1 and 1000");
    }
    Ok((max_attempts, repeats))
}

/// One grid: axes in the order written.
pub type Grid = Vec<(String, Vec<Value>)>;

/// `grid` as a table (one product) or a list of tables (the union of their products).
fn check_grids(
    grid: Option<GridFile>,
    train: &Map<String, Value>,
    keys: Keys,
) -> Result<Vec<Grid>, SpecError> {
    match grid {
        None => Ok(vec![]),
        Some(GridFile::One(m)) => Ok(vec![check_grid("grid", &m, train, keys)?]),
        Some(GridFile::Many(tables)) if tables.is_empty() => {
            err("grid", "must not be an empty list")
        }
        Some(GridFile::Many(tables)) => tables
            .iter()
            .enumerate()
            .map(|(i, m)| check_grid(&format!("grid[{i}]"), m, train, keys))
            .collect(),
    }
}

/// One grid table. Sizes are checked before any value is looked at, so a huge axis is refused
/// from its length alone; duplicates are then found in linear time.
fn check_grid(
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
pub const MAX_STORED_BYTES: usize = 128 << 20;

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
    search: &search::Search,
    repeats: i64,
) -> Result<(), SpecError> {
    use search::Distribution;
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

/// Whether two values are one value (numbers by value: 1 and 1.0 are one).
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    value_key(a) == value_key(b)
}

/// The parameter names of `points` (sorted) that differ between them, and those all share.
pub fn split_keys(points: &[&Map<String, Value>]) -> (Vec<String>, Vec<String>) {
    let names: std::collections::BTreeSet<&String> = points.iter().flat_map(|p| p.keys()).collect();
    names
        .into_iter()
        .cloned()
        .partition(|k| points.iter().any(|p| p.get(k) != points[0].get(k)))
}

/// A key under which equal values are equal: numbers by value (1 and 1.0 are one value).
pub(crate) fn value_key(v: &Value) -> String {
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
