//! A sweep's parameters checked one value at a time: `worker train` options against their types
//! and bounds (defined once, in [`protocol::train`]), a command job's free names by
//! `super::command`.
use super::{err, SpecError};
use serde_json::Value;

pub use protocol::train::{KeyType, MAX_EPOCHS, MAX_SEED, MAX_STRING, TRAIN_KEYS, WORKER_SETTINGS};

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
        return super::command::check_parameter(field, key, v);
    }
    if let Some((_, why)) = WORKER_SETTINGS.iter().find(|(k, _)| *k == key) {
        return err(field, *why);
    }
    protocol::train::check(key, v, protocol::train::Paths::Relative).or_else(|why| err(field, why))
}
