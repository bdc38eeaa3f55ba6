//! Shared helpers of the worker's integration tests.
#![allow(dead_code)]
use std::path::PathBuf;
use worker::config::{DatasetKind, TrainConfig};

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared folder beside the checkout (CI has it too); `SEED_SHARED` points elsewhere.
pub(crate) fn shared_dir() -> PathBuf {
    std::env::var_os("SEED_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"))
}

/// Real CIFAR-10 records: 5,000 train + 1,000 test (`CIFAR10_MINI` overrides the location).
pub(crate) fn cifar_mini() -> PathBuf {
    let dir = std::env::var_os("CIFAR10_MINI")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("data/cifar10-mini"));
    assert!(
        dir.join("data_batch_1.bin").exists(),
        "CIFAR-10 test records not found at {}: set CIFAR10_MINI (see docs/testing.md)",
        dir.display()
    );
    dir
}

pub(crate) fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker"))
}

/// The study's structure at a few thousand parameters, on the CPU, one thread, fast.
pub(crate) fn tiny(dataset: DatasetKind) -> TrainConfig {
    TrainConfig {
        dataset,
        data_dir: cifar_mini_or_unused(dataset),
        model_widths: vec![8, 16, 32, 64],
        model_depth: 1,
        model_heads: 2,
        threads: Some(1),
        epochs: 3,
        batch_size: 32,
        limit_train: Some(256),
        limit_test: Some(200),
        ..TrainConfig::default()
    }
}

fn cifar_mini_or_unused(d: DatasetKind) -> PathBuf {
    match d {
        DatasetKind::Cifar10 => cifar_mini(),
        DatasetKind::Synthetic => PathBuf::from("unused"),
    }
}

pub(crate) fn read_metrics(dir: &std::path::Path) -> Vec<worker::metrics::EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `script` with the project's PyTorch (`.venv`, from scripts/setup.sh) and `args`; panics
/// with its stderr unless it succeeds, else returns its stdout.
pub(crate) fn python<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> String {
    let python = repo_root().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh provides it)", python.display()));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
