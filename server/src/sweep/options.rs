//! The options of `worker train` a sweep may set, with their types and bounds, and the check of one
//! value against them (a command job's free names are checked by `crate::sweep::command`).
use super::{err, SpecError};
use serde_json::Value;

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
];

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

/// What the names of a sweep's parameters are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Options of `worker train`, each with its type ([`TRAIN_KEYS`]).
    Trainer,
    /// A command job's own names: any identifier, any scalar value.
    Free,
}

pub(crate) fn check_value(field: &str, key: &str, v: &Value, keys: Keys) -> Result<(), SpecError> {
    if keys == Keys::Free {
        return crate::sweep::command::check_parameter(field, key, v);
    }
    if let Some((_, why)) = WORKER_SETTINGS.iter().find(|(k, _)| *k == key) {
        return err(field, *why);
    }
    let Some((_, ty)) = TRAIN_KEYS.iter().find(|(k, _)| *k == key) else {
        return err(field, "unknown `worker train` option");
    };
    let ok = match ty {
        KeyType::Int(min, max) => match v.as_i64() {
            Some(n) if (*min..=*max).contains(&n) => true,
            Some(n) if n > *max => return err(field, format!("must be at most {max}")),
            Some(_) if *min == 1 => return err(field, "must be positive"),
            Some(_) => return err(field, format!("must be at least {min}")),
            None if v.as_u64().is_some() => return err(field, format!("must be at most {max}")),
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
        KeyType::Str | KeyType::RelPath | KeyType::Device => return check_string(field, ty, v),
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
            if list.len() > 1000 {
                return err(field, "at most 1000 milestones");
            }
            if nums.windows(2).any(|w| w[0] >= w[1])
                || nums.iter().any(|&n| !(0..=MAX_EPOCHS).contains(&n))
            {
                return err(
                    field,
                    format!("must be strictly increasing integers from 0 to {MAX_EPOCHS}"),
                );
            }
            true
        }
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
        err(field, format!("wrong type: expected {}", describe(ty)))
    }
}

/// Strings: bounded in length; paths relative and inside their root; devices well formed.
fn check_string(field: &str, ty: &KeyType, v: &Value) -> Result<(), SpecError> {
    let Some(s) = v.as_str() else {
        return err(field, format!("wrong type: expected {}", describe(ty)));
    };
    if s.len() > MAX_STRING {
        return err(field, format!("longer than {MAX_STRING} bytes"));
    }
    match ty {
        KeyType::RelPath => match protocol::check_relative_path(s) {
            Ok(_) => Ok(()),
            Err(why) => err(field, why.message()),
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
                err(field, "must be cpu, cuda or cuda:N")
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
    }
}
