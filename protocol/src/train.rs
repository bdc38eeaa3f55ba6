//! The options of `worker train`, defined once for both sides: their names, types and bounds
//! ([`TRAIN_KEYS`]), their defaults ([`defaults`]), the check of one value ([`check`]) and of the
//! options that depend on each other ([`check_combination`]). The coordinator checks a sweep's
//! values with these before a job exists; `worker train` checks its command line with the same
//! functions and takes its defaults from [`defaults`].
use serde_json::{Map, Value};

/// The type of a `worker train` option, as a sweep may set it. Every number has an upper bound
/// too: a client's number later meets arithmetic (seed + repeat, epochs in curves and figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyType {
    /// An integer in min..=max.
    Int(i64, i64),
    /// A finite number > 0.
    PositiveFloat,
    /// A finite number >= 0.
    NonNegativeFloat,
    /// A string of at most [`MAX_STRING`] bytes.
    Str,
    /// A relative path below a root the worker was given: no leading `/`, no `..`, no NUL.
    RelPath,
    /// cpu, cuda or cuda:N.
    Device,
    Bool,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// Strictly increasing integers in 0..=[`MAX_EPOCHS`].
    IncreasingInts,
    /// Exactly four integers in 1..=65536.
    Widths,
    /// The optimiser's settings from set epochs on: a list of at most 1000 tables, each with an
    /// `epoch` (strictly increasing, 1..=MAX_EPOCHS) and at least one of `lr` (> 0), `momentum`
    /// and `weight_decay` (>= 0).
    Schedule,
}

/// Upper bounds of the options (generous: far beyond any run of the study).
pub const MAX_EPOCHS: i64 = 100_000;
/// Seeds stay exact in a JSON double and leave room for `seed + repeat`.
pub const MAX_SEED: i64 = (1 << 53) - 1 - 1000;
const MAX_COUNT: i64 = 1_000_000_000;
/// Longest string value a sweep may set (a path, a device name).
pub const MAX_STRING: usize = 1024;

/// Every option of `worker train` in snake_case, with its type. `--out` is the worker's to choose;
/// so are `data_url` and `data_md5` (where a worker fetches data from is its operator's decision).
pub const TRAIN_KEYS: &[(&str, KeyType)] = &[
    ("dataset", KeyType::Choice(&["cifar10", "synthetic"])),
    ("data_dir", KeyType::RelPath),
    ("epochs", KeyType::Int(1, MAX_EPOCHS)),
    ("lr", KeyType::PositiveFloat),
    ("batch_size", KeyType::Int(1, 1 << 20)),
    ("momentum", KeyType::NonNegativeFloat),
    ("weight_decay", KeyType::NonNegativeFloat),
    ("warmup_epochs", KeyType::Int(0, MAX_EPOCHS)),
    ("warmup_factor", KeyType::PositiveFloat),
    ("milestones", KeyType::IncreasingInts),
    ("gamma", KeyType::PositiveFloat),
    ("eval_interval", KeyType::Int(1, MAX_EPOCHS)),
    ("eval_batch_size", KeyType::Int(1, 1 << 20)),
    ("seed", KeyType::Int(0, MAX_SEED)),
    ("device", KeyType::Device),
    ("bf16", KeyType::Bool),
    ("tf32", KeyType::Bool),
    ("fp64", KeyType::Bool),
    ("channels_last", KeyType::Bool),
    ("limit_train", KeyType::Int(1, MAX_COUNT)),
    ("limit_test", KeyType::Int(1, MAX_COUNT)),
    ("model_widths", KeyType::Widths),
    ("model_depth", KeyType::Int(0, 1000)),
    ("model_heads", KeyType::Int(1, 1024)),
    ("threads", KeyType::Int(1, 4096)),
    ("init_from", KeyType::RelPath),
    ("save_predictions", KeyType::Bool),
    ("nproc_per_node", KeyType::Int(1, 1024)),
    ("no_sync_bn", KeyType::Bool),
    ("dist_backend", KeyType::Choice(&["gloo", "nccl"])),
    ("dist_timeout", KeyType::Int(1, 7 * 24 * 3600)),
    ("schedule", KeyType::Schedule),
];

/// The one launch option a sweep sets beside the trainer's: how many workers a job spans. It is
/// not a `worker train` option of the run (`--nnodes` places the ranks, it changes no number):
/// the worker passes it with the node's rank and the rendezvous its gang agreed on.
/// The options a run may change when it resumes (the optimiser's): all population-based training
/// may change in our trainer; anything else is the run's shape or its model.
pub const CHANGEABLE_ON_RESUME: [&str; 3] = ["lr", "momentum", "weight_decay"];

pub const NNODES: &str = "nnodes";
/// Bounds of `nnodes` (`[train]` and `[command]`).
pub const MAX_NNODES: i64 = 1024;

/// Keys a sweep may not set, and why.
pub const WORKER_SETTINGS: &[(&str, &str)] = &[
    (
        "data_url",
        "where data is fetched from is the worker's setting (worker run --data-url), not a sweep's",
    ),
    (
        "data_md5",
        "the data checksum is the worker's setting (worker run --data-md5), not a sweep's",
    ),
];

/// How a path option is checked: a sweep's paths are relative to a root the worker chose (never
/// absolute, never `..`); `worker train`'s own command line names any path of its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paths {
    Relative,
    Any,
}

/// Checks one value of the option `key` against its type and bounds; the message says what is
/// wrong (the caller names the field: `train.lr`, `--lr`).
pub fn check(key: &str, v: &Value, paths: Paths) -> Result<(), String> {
    let nnodes = (NNODES, KeyType::Int(1, MAX_NNODES));
    let Some((_, ty)) = TRAIN_KEYS.iter().chain([&nnodes]).find(|(k, _)| *k == key) else {
        return Err("unknown `worker train` option".into());
    };
    let ok = match ty {
        KeyType::Int(min, max) => match v.as_i64() {
            Some(n) if (*min..=*max).contains(&n) => true,
            Some(n) if n > *max => return Err(format!("must be at most {max}")),
            Some(_) if *min == 1 => return Err("must be positive".into()),
            Some(_) => return Err(format!("must be at least {min}")),
            None if v.as_u64().is_some() => return Err(format!("must be at most {max}")),
            None => return Err("must be an integer".into()),
        },
        KeyType::PositiveFloat | KeyType::NonNegativeFloat => {
            let Some(x) = v.as_f64() else {
                return Err("must be a number".into());
            };
            if !x.is_finite() {
                return Err("must be finite".into());
            }
            if *ty == KeyType::PositiveFloat && x <= 0.0 {
                return Err("must be positive".into());
            }
            x >= 0.0
        }
        KeyType::Str | KeyType::RelPath | KeyType::Device => return check_string(ty, v, paths),
        KeyType::Bool => v.is_boolean(),
        KeyType::Choice(options) => match v.as_str() {
            Some(s) if options.contains(&s) => true,
            _ => return Err(format!("must be one of {options:?}")),
        },
        KeyType::IncreasingInts => {
            let Some(list) = v.as_array() else {
                return Err("must be a list of integers".into());
            };
            let nums: Option<Vec<i64>> = list.iter().map(Value::as_i64).collect();
            let Some(nums) = nums else {
                return Err("must be a list of integers".into());
            };
            if list.len() > 1000 {
                return Err("at most 1000 milestones".into());
            }
            if nums.windows(2).any(|w| w[0] >= w[1])
                || nums.iter().any(|&n| !(0..=MAX_EPOCHS).contains(&n))
            {
                return Err(format!(
                    "must be strictly increasing integers from 0 to {MAX_EPOCHS}"
                ));
            }
            true
        }
        KeyType::Schedule => return check_schedule(v),
        KeyType::Widths => {
            let nums: Option<Vec<i64>> = v.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .filter(|&n| (1..=65536).contains(&n))
                    .collect()
            });
            matches!((nums, v.as_array()), (Some(n), Some(a)) if n.len() == 4 && a.len() == 4)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("wrong type: expected {}", describe(ty)))
    }
}

/// `schedule`: each entry's keys, types and bounds, the epochs strictly increasing.
fn check_schedule(v: &Value) -> Result<(), String> {
    let Some(list) = v.as_array() else {
        return Err("must be a list of tables: [{epoch, lr?, momentum?, weight_decay?}]".into());
    };
    if list.len() > 1000 {
        return Err("at most 1000 entries".into());
    }
    let mut last = 0;
    for (i, entry) in list.iter().enumerate() {
        let Some(table) = entry.as_object() else {
            return Err(format!("entry {i} must be a table"));
        };
        let epoch = table.get("epoch").and_then(Value::as_i64);
        match epoch {
            Some(e) if e > last && e <= MAX_EPOCHS => last = e,
            _ => {
                return Err(format!(
                    "entry {i}: `epoch` must be an integer in 1..={MAX_EPOCHS}, each after the one before"
                ))
            }
        }
        if table.len() < 2 {
            return Err(format!(
                "entry {i} sets nothing: name lr, momentum or weight_decay"
            ));
        }
        for (k, x) in table.iter().filter(|(k, _)| *k != "epoch") {
            if !["lr", "momentum", "weight_decay"].contains(&k.as_str()) {
                return Err(format!(
                    "entry {i}: unknown key `{k}` (epoch, lr, momentum, weight_decay)"
                ));
            }
            // The options' own types and bounds.
            check(k, x, Paths::Any).map_err(|why| format!("entry {i}: {k} {why}"))?;
        }
    }
    Ok(())
}

/// Strings: bounded in length; paths relative and inside their root; devices well formed.
fn check_string(ty: &KeyType, v: &Value, paths: Paths) -> Result<(), String> {
    let Some(s) = v.as_str() else {
        return Err(format!("wrong type: expected {}", describe(ty)));
    };
    if s.len() > MAX_STRING {
        return Err(format!("longer than {MAX_STRING} bytes"));
    }
    match ty {
        KeyType::RelPath if paths == Paths::Relative => match crate::check_relative_path(s) {
            Ok(_) => Ok(()),
            Err(why) => Err(why.message().to_string()),
        },
        KeyType::Device => {
            let ok = s == "cpu"
                || s == "cuda"
                || s.strip_prefix("cuda:").is_some_and(|n| {
                    !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit())
                });
            if ok {
                Ok(())
            } else {
                Err("must be cpu, cuda or cuda:N".into())
            }
        }
        _ => Ok(()),
    }
}

fn describe(ty: &KeyType) -> &'static str {
    match ty {
        KeyType::Int(..) => "an integer",
        KeyType::PositiveFloat | KeyType::NonNegativeFloat => "a number",
        KeyType::Str => "a string",
        KeyType::RelPath => "a relative path",
        KeyType::Device => "cpu, cuda or cuda:N",
        KeyType::Bool => "true or false",
        KeyType::Choice(_) => "one of the listed strings",
        KeyType::IncreasingInts => "a list of integers",
        KeyType::Widths => "four positive integers",
        KeyType::Schedule => "a list of tables",
    }
}

/// The options' defaults: the study's recipe as its first README states it (SEED.md), gamma 0.1
/// included. `worker train`'s command line takes them from here; the coordinator schedules by them
/// ([`crate::JobShape`]) and checks combinations with them.
pub mod defaults {
    pub const DATA_DIR: &str = "data/cifar-10-batches-bin";
    pub const EPOCHS: u32 = 300;
    pub const LR: f64 = 1e-2;
    pub const BATCH_SIZE: u32 = 32;
    pub const MOMENTUM: f64 = 0.9;
    pub const WEIGHT_DECAY: f64 = 1e-4;
    pub const WARMUP_EPOCHS: u32 = 1;
    pub const WARMUP_FACTOR: f64 = 0.01;
    pub const MILESTONES: [u32; 4] = [60, 120, 200, 260];
    pub const GAMMA: f64 = 0.1;
    pub const EVAL_INTERVAL: u32 = 1;
    pub const EVAL_BATCH_SIZE: u32 = 512;
    pub const SEED: u64 = 0;
    pub const DEVICE: &str = "cpu";
    pub const MODEL_WIDTHS: [i64; 4] = [64, 128, 256, 512];
    pub const MODEL_DEPTH: usize = 4;
    pub const MODEL_HEADS: i64 = 4;
    pub const NPROC_PER_NODE: u32 = 1;
    pub const DIST_TIMEOUT: u64 = 300;
}

/// The options [`check_combination`] reads.
pub const COMBINED_KEYS: [&str; 4] = ["model_widths", "model_heads", "bf16", "fp64"];

/// Checks the options that depend on each other in one job's settings (absent ones at their
/// defaults): the attention heads divide the last stage's width; bf16 and fp64 exclude each other.
/// The error names the option at fault and why.
pub fn check_combination(params: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    let widths: Vec<i64> = match params.get("model_widths").and_then(Value::as_array) {
        Some(w) => w.iter().filter_map(Value::as_i64).collect(),
        None => defaults::MODEL_WIDTHS.to_vec(),
    };
    let heads = params
        .get("model_heads")
        .and_then(Value::as_i64)
        .unwrap_or(defaults::MODEL_HEADS);
    if let Some(&last) = widths.last() {
        if heads <= 0 || last % heads != 0 {
            return Err((
                "model_heads",
                format!("{heads} heads must divide the last stage's width ({last})"),
            ));
        }
    }
    let on = |k: &str| params.get(k).and_then(Value::as_bool).unwrap_or(false);
    if on("bf16") && on("fp64") {
        return Err(("fp64", "bf16 and fp64 exclude each other".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Table-driven: each value against its option's type and bounds.
    #[test]
    fn values_are_checked_against_their_option() {
        let cases = [
            ("epochs", json!(1), true),
            ("epochs", json!(0), false),
            ("epochs", json!(MAX_EPOCHS + 1), false),
            ("lr", json!(0.1), true),
            ("lr", json!(0), false),
            ("lr", json!("fast"), false),
            ("momentum", json!(0), true),
            ("milestones", json!([60, 120]), true),
            ("milestones", json!([60, 60]), false),
            (
                "schedule",
                json!([{"epoch": 3, "lr": 0.1}, {"epoch": 9, "momentum": 0}]),
                true,
            ),
            (
                "schedule",
                json!([{"epoch": 3, "lr": 0.1}, {"epoch": 3, "lr": 0.2}]),
                false,
            ),
            ("schedule", json!([{"epoch": 0, "lr": 0.1}]), false),
            ("schedule", json!([{"epoch": 2}]), false),
            ("schedule", json!([{"epoch": 2, "lr": 0}]), false),
            ("schedule", json!([{"epoch": 2, "batch_size": 8}]), false),
            ("schedule", json!({"epoch": 2, "lr": 0.1}), false),
            ("model_widths", json!([8, 16, 32, 64]), true),
            ("model_widths", json!([8, 16]), false),
            ("device", json!("cuda:1"), true),
            ("device", json!("tpu"), false),
            ("dataset", json!("mnist"), false),
            ("bf16", json!(1), false),
            ("data_url", json!("http://x"), false),
            ("nope", json!(1), false),
        ];
        for (key, v, ok) in cases {
            assert_eq!(check(key, &v, Paths::Relative).is_ok(), ok, "{key} = {v}");
        }
        // A sweep's paths stay under the worker's root; the worker's own command line may name any.
        assert!(check("data_dir", &json!("/srv/data"), Paths::Relative).is_err());
        assert!(check("data_dir", &json!("/srv/data"), Paths::Any).is_ok());
    }

    #[test]
    fn combinations_are_checked_with_the_defaults() {
        let ok = |v: Value| check_combination(v.as_object().unwrap());
        assert!(ok(json!({})).is_ok());
        assert_eq!(ok(json!({"model_heads": 3})).unwrap_err().0, "model_heads");
        assert!(ok(json!({"model_heads": 3, "model_widths": [3, 6, 9, 12]})).is_ok());
        assert_eq!(
            ok(json!({"bf16": true, "fp64": true})).unwrap_err().0,
            "fp64"
        );
    }
}
