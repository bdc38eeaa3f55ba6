//! The sweep file's shape, defined once. serde reads it (TOML and JSON alike, unknown keys refused,
//! the path of a wrong type named), the OpenAPI schema is derived from it, and
//! [`SweepSpec::to_file`](super::SweepSpec::to_file) writes it back as the stored form (every default
//! filled in). What a type cannot say (bounds, option names and their types, sizes, placeholders)
//! is checked after, by [`SweepFile::validate`] in `sweep/mod.rs`.
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::early_stop::Mode;
use super::objectives::{Constraint, Objective};
use super::search::Distribution;
use super::SpecError;

/// A sweep file (docs/sweep-files.md). Rejected whole if any part is wrong (422 naming the field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Settings every job shares: `worker train` options, or with `command` the program's own
    /// parameter names; and `nnodes` (1 to 1024, default 1): the workers each job spans, as one
    /// gang of `nnodes` x `nproc_per_node` ranks (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub train: Map<String, Value>,
    /// Axes (option -> list of values, the last varying fastest), or a list of such tables whose
    /// products are united.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub grid: Option<GridFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunFile>,
    /// Run this program instead of `worker train` (docs/command-jobs.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<protocol::CommandSpec>,
}

/// `[grid]`: one table of axes (option -> list of values, the last varying fastest), or
/// `[[grid]]`: a list of such tables, whose products are united.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GridFile {
    One(Map<String, Value>),
    Many(Vec<Map<String, Value>>),
}

// By hand: serde's untagged enums can only say "did not match any variant".
impl<'de> Deserialize<'de> for GridFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Object(table) => Ok(GridFile::One(table)),
            Value::Array(tables) => tables
                .into_iter()
                .enumerate()
                .map(|(i, t)| match t {
                    Value::Object(table) => Ok(table),
                    _ => Err(D::Error::custom(format!(
                        "entry {i} must be a table/object"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(GridFile::Many),
            _ => Err(D::Error::custom("must be a table/object or a list of them")),
        }
    }
}

/// `[search]`: how the points are chosen. `grid` (the default) takes them from `[grid]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFile {
    pub method: SearchMethod,
    /// A search: how many trials (trials x repeats at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub trials: Option<i64>,
    /// A search: the seed of the draws (0 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// A search: option -> distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, Distribution>>)]
    pub space: Option<IndexMap<String, Distribution>>,
    /// Random, TPE and NSGA-II: the reported metric a trial is judged by, for one objective
    /// (TPE and NSGA-II: `accuracy` by default). Not with `objectives`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Whether larger or smaller is better (by default: smaller for losses and seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Several objectives at once (1 to 4, metrics distinct), instead of `metric` and `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Vec<Objective>>,
    /// Feasible when each metric is <= its `max` (or >= its `min`); infeasible trials rank after
    /// feasible ones, by how far past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<Constraint>>,
    /// TPE: random trials before the model is used (10 by default; 0 to trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100000)]
    pub startup_trials: Option<i64>,
    /// TPE: candidates drawn from the good model per trial (24 by default; 1 to 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub ei_candidates: Option<i64>,
    /// TPE: one joint model of all parameters (true by default) or one per parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivariate: Option<bool>,
    /// TPE: trials still running count as bad points (true by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant_liar: Option<bool>,
    /// NSGA-II: trials in a generation (50 by default, at most `trials`; 2 to 10,000). PBT: the
    /// jobs trained at once, each the full schedule (required; 2 to 10,000; no `trials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2, maximum = 10000)]
    pub population: Option<i64>,
    /// PBT: epochs between a member's decisions (Ray Tune's `perturbation_interval`; 1 to 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub interval: Option<i64>,
    /// PBT: the bottom fraction that copies the top one (0.25 by default; 0 to 0.5; 0 never
    /// exploits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// PBT: the probability that an explored parameter is drawn again from the space (0.25 by
    /// default), else it is scaled by a factor of `perturb` or moved to a neighbouring choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample_probability: Option<f64>,
    /// PBT: the factors a number is scaled by, one picked at random ([1.2, 0.8] by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturb: Option<Vec<f64>>,
    /// NSGA-II: the probability that a child mixes two parents (0.9 by default), else copies one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossover_prob: Option<f64>,
    /// NSGA-II: the probability a mixed parameter keeps the first parent's value (0.5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapping_prob: Option<f64>,
    /// NSGA-II: the probability each parameter is redrawn from its space (by default 1 / the
    /// number of parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_prob: Option<f64>,
    /// TPE and NSGA-II: sweeps (ids) whose finished trials are history; same space keys; at most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<Vec<i64>>,
    /// TPE and NSGA-II: points evaluated first, in order (each names every key of the space); they count
    /// toward `trials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub enqueue: Option<Vec<Map<String, Value>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    Grid,
    Random,
    Tpe,
    Nsga2,
    Pbt,
}

impl SearchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMethod::Grid => "grid",
            SearchMethod::Random => "random",
            SearchMethod::Tpe => "tpe",
            SearchMethod::Nsga2 => "nsga2",
            SearchMethod::Pbt => "pbt",
        }
    }
}

/// `[early_stop]`: the rule that stops jobs early (docs/sweep-files.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopFile {
    pub method: EarlyStopMethod,
    /// A reported metric: one of the trainer's named metrics, or a command job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Whether larger or smaller is better (by default: smaller for losses and seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// ASHA: the first rung's epoch; median: the warm-up epochs before any stop (1 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epochs: Option<i64>,
    /// ASHA only: eta (3 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction_factor: Option<i64>,
    /// Median only: completed jobs before any stop (5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_trials: Option<i64>,
    /// Hyperband only: the largest resource (Optuna's `max_resource`), an epoch count or
    /// `"auto"` (nothing stopped until a job completes); absent: each job's own `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<MaxEpochsFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStopMethod {
    Asha,
    Median,
    Hyperband,
}

/// `max_epochs`: a number of epochs or a word (only `"auto"` is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MaxEpochsFile {
    Epochs(i64),
    Word(String),
}

/// `[run]`: attempts per job (3 by default), runs per point (1 by default, seeds seed, seed+1...),
/// and whether the trials are the caller's own (`external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<i64>,
    /// The trials run in the user's own loop (ask and tell, docs/python.md), never by a worker:
    /// no `[command]`, and the parameters are free names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
}

impl SweepFile {
    /// Reads the file's structure from a parsed TOML or JSON document; a wrong type or an unknown
    /// key is refused with its path (`grid[1].lr`).
    pub fn from_value(v: Value) -> Result<Self, SpecError> {
        // serde would also read a struct from a list of its fields' values (`run = [3, 1]`): the
        // tables are tables.
        let Some(top) = v.as_object() else {
            return Err(spec_error(".", "invalid type"));
        };
        for key in ["search", "early_stop", "run", "command"] {
            if top.get(key).is_some_and(|t| !t.is_object()) {
                return Err(SpecError {
                    field: key.into(),
                    message: "must be a table/object".into(),
                });
            }
        }
        // `CommandSpec` is also a worker-protocol type, lenient on the wire; in a file an unknown
        // key is a mistake. Its keys come from the type's own schema.
        let known = schema_keys::<protocol::CommandSpec>();
        let command = top.get("command").and_then(Value::as_object);
        if let Some(k) = command.and_then(|c| c.keys().find(|k| !known.contains(k))) {
            return Err(SpecError {
                field: format!("command.{k}"),
                message: format!("unknown field `{k}`, expected one of {}", known.join(", ")),
            });
        }
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            spec_error(&path, &e.into_inner().to_string())
        })
    }
}

/// The properties a type's schema lists (its fields as serde names them).
fn schema_keys<T: utoipa::PartialSchema>() -> Vec<String> {
    match T::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) => {
            o.properties.keys().cloned().collect()
        }
        _ => vec![],
    }
}

/// serde's message at `path`, reworded where serde's own words would not name the field.
fn spec_error(path: &str, message: &str) -> SpecError {
    let root = path == ".";
    let at = |key: &str| match root {
        true => key.to_string(),
        false => format!("{path}.{key}"),
    };
    if let Some(key) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        return SpecError {
            field: at(key),
            message: "missing".into(),
        };
    }
    if root && message.starts_with("invalid type") {
        return SpecError {
            field: "(root)".into(),
            message: "a sweep is a table/object".into(),
        };
    }
    SpecError {
        field: if root { "(root)".into() } else { path.into() },
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(v: Value) -> (String, String) {
        let e = SweepFile::from_value(v).unwrap_err();
        (e.field, e.message)
    }

    /// Table-driven: each structural mistake is refused with the path of the field at fault.
    #[test]
    fn wrong_structure_is_refused_with_its_path() {
        let cases = [
            (json!([1, 2]), "(root)", "table"),
            (json!({"train": {}}), "name", "missing"),
            (json!({"name": 5}), "name", "string"),
            (json!({"name": "x", "colour": 1}), "colour", "unknown field"),
            (json!({"name": "x", "train": 1}), "train", "map"),
            (json!({"name": "x", "run": [3, 1]}), "run", "table"),
            (json!({"name": "x", "grid": 1}), "grid", "list of them"),
            (json!({"name": "x", "grid": [{}, 2]}), "grid", "entry 1"),
            (
                json!({"name": "x", "run": {"retries": 2}}),
                "run.retries",
                "unknown field",
            ),
            (
                json!({"name": "x", "run": {"repeats": 1.5}}),
                "run.repeats",
                "i64",
            ),
            (
                json!({"name": "x", "search": {}}),
                "search.method",
                "missing",
            ),
            (
                json!({"name": "x", "search": {"method": "bayes"}}),
                "search.method",
                "unknown variant",
            ),
            (
                json!({"name": "x", "search": {"method": "random", "space": {"lr": {"normal": [0, 1]}}}}),
                "search.space.lr",
                "unknown variant",
            ),
            (
                json!({"name": "x", "search": {"method": "random", "space": {"lr": {"uniform": [1]}}}}),
                "search.space.lr.uniform",
                "length",
            ),
            (
                json!({"name": "x", "early_stop": {"method": "asha", "eta": 3}}),
                "early_stop.eta",
                "unknown field",
            ),
            (
                json!({"name": "x", "early_stop": {"method": "asha", "mode": "up"}}),
                "early_stop.mode",
                "unknown variant",
            ),
            (
                json!({"name": "x", "command": {"argv": ["x"], "shell": true}}),
                "command.shell",
                "unknown field",
            ),
            (
                json!({"name": "x", "command": {"argv": "python3 x.py"}}),
                "command.argv",
                "sequence",
            ),
        ];
        for (v, field, words) in cases {
            let (f, m) = refused(v.clone());
            assert_eq!(f, field, "{v}: {m}");
            assert!(m.contains(words), "{v}: {m:?} lacks {words:?}");
        }
    }

    /// What is read is written back unchanged: the stored form is the file's own shape.
    #[test]
    fn a_file_round_trips_through_its_stored_form() {
        let v = json!({
            "name": "x",
            "train": {"epochs": 2},
            "grid": [{"lr": [0.1]}, {"lr": [0.2], "batch_size": [4]}],
            "early_stop": {"method": "median", "metric": "accuracy", "mode": "max", "min_epochs": 1, "startup_trials": 5},
            "run": {"max_attempts": 3, "repeats": 1},
            "command": {"argv": ["x", "{lr}"], "workdir": null, "ranks": 1, "nnodes": 1},
        });
        let file = SweepFile::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&file).unwrap(), v);
        let search = json!({"name": "y", "search": {"method": "random", "trials": 3, "seed": 0,
            "space": {"lr": {"log_uniform": [0.001, 0.1]}, "b": {"int": [1, 4]}, "c": {"choice": ["a", 1]}}}});
        let file = SweepFile::from_value(search.clone()).unwrap();
        assert_eq!(serde_json::to_value(&file).unwrap(), search);
    }
}
