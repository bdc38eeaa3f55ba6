//! Whole runs of the trainer on the CPU: learning on real CIFAR-10 records, determinism, divergence,
//! kill-and-resume, and the command line's behaviour on bad input.
mod common;

use protocol::JobStatus;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use worker::config::DatasetKind;
use worker::train::{self, Status};

#[test]
fn tiny_model_learns_real_cifar10_well_above_chance() {
    let out = tempfile::tempdir().unwrap();
    let cfg = worker::config::TrainConfig {
        epochs: 5,
        warmup_epochs: 0,
        lr: 0.05,
        limit_train: Some(2000),
        limit_test: None,
        seed: 1,
        save_predictions: true,
        ..common::tiny(DatasetKind::Cifar10)
    };
    let mut seen = vec![];
    let summary = train::run(&cfg, out.path(), &mut |m| seen.push(m.epoch)).unwrap();
    assert_eq!(summary.status, Status::Completed);
    assert_eq!(
        seen,
        vec![1, 2, 3, 4, 5],
        "the callback sees every evaluated epoch"
    );
    let m = summary.final_metrics.unwrap();
    // Measured 0.285 (seed 1, 2,000 train / 1,000 test records, 5 epochs); chance is 0.10.
    assert!(m.accuracy >= 0.20, "accuracy {}", m.accuracy);
    assert!(m.test_loss.is_finite() && m.images_per_sec > 0.0 && m.seconds > 0.0);
    assert_eq!(common::read_metrics(out.path()).len(), 5);
    let preds = std::fs::read_to_string(out.path().join("predictions.csv")).unwrap();
    assert_eq!(preds.lines().next(), Some("index,label,prediction"));
    assert_eq!(preds.lines().count(), 1001);
    // Accuracy recomputed from the predictions file agrees with the metric.
    let right = preds.lines().skip(1).filter(|l| {
        let f: Vec<&str> = l.split(',').collect();
        f[1] == f[2]
    });
    assert_eq!(right.count() as f64 / 1000.0, m.accuracy);
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], JobStatus::Completed.as_str());
    assert_eq!(s["world_size"], 1);
    assert!(s["parameters"].as_i64().unwrap() > 0 && s["git_commit"].is_string());
    assert!(
        out.path().join("checkpoint.safetensors").exists()
            && out.path().join("resume.safetensors").exists()
    );
}

#[test]
fn same_seed_same_metrics_bit_for_bit() {
    let cfg = worker::config::TrainConfig {
        epochs: 2,
        seed: 11,
        ..common::tiny(DatasetKind::Synthetic)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train::run(&cfg, a.path(), &mut |_| {}).unwrap();
    train::run(&cfg, b.path(), &mut |_| {}).unwrap();
    let (ma, mb) = (
        common::read_metrics(a.path()),
        common::read_metrics(b.path()),
    );
    assert_eq!(ma.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        assert!(x.bits_eq_ignoring_time(y), "{x:?} != {y:?}");
    }
    let other = worker::config::TrainConfig { seed: 12, ..cfg };
    let c = tempfile::tempdir().unwrap();
    train::run(&other, c.path(), &mut |_| {}).unwrap();
    assert!(
        !common::read_metrics(c.path())[1].bits_eq_ignoring_time(&ma[1]),
        "another seed, another run"
    );
}

#[test]
fn a_huge_lr_diverges_with_nan_recorded_and_its_own_exit_code() {
    let out = tempfile::tempdir().unwrap();
    let cfg = worker::config::TrainConfig {
        lr: 1e8,
        warmup_epochs: 0,
        epochs: 4,
        ..common::tiny(DatasetKind::Synthetic)
    };
    let status = train_in(&cfg, out.path());
    assert_eq!(status.code(), Some(worker::EXIT_DIVERGED));
    let metrics = common::read_metrics(out.path());
    let last = metrics.last().expect("the diverged epoch is recorded");
    assert!(last.train_loss.is_nan() && last.test_loss.is_nan());
    assert!(metrics.len() < 4, "stopped at once");
    let text = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(text.lines().last().unwrap().contains("\"test_loss\":null"));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], JobStatus::Diverged.as_str());
    // The diverged weights were evaluated once, as the study's runs were (it shows 10.00: a network
    // that outputs NaN predicts one class), and that accuracy is recorded, here and in the summary.
    assert!((0.0..=1.0).contains(&last.accuracy), "{}", last.accuracy);
    assert_eq!(s["final"]["accuracy"].as_f64(), Some(last.accuracy));
}

#[test]
fn killed_and_restarted_run_ends_with_the_uninterrupted_metrics() {
    let cfg = worker::config::TrainConfig {
        epochs: 5,
        seed: 3,
        limit_train: Some(512),
        ..common::tiny(DatasetKind::Synthetic)
    };
    let whole = tempfile::tempdir().unwrap();
    assert!(train_in(&cfg, whole.path()).success());

    let cut = tempfile::tempdir().unwrap();
    for kill_after in [1, 3] {
        let mut child = train_command(&cfg, cut.path()).spawn().unwrap();
        wait_for_epochs(cut.path(), kill_after);
        // Somewhere inside the next epoch (or while it writes its files).
        std::thread::sleep(Duration::from_millis(150 * kill_after as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(train_in(&cfg, cut.path()).success());
    let (a, b) = (
        common::read_metrics(whole.path()),
        common::read_metrics(cut.path()),
    );
    assert_eq!(
        b.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "each epoch once"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.bits_eq_ignoring_time(y), "{x:?} != {y:?}");
    }
    let wa = std::fs::read(whole.path().join("checkpoint.safetensors")).unwrap();
    let wb = std::fs::read(cut.path().join("checkpoint.safetensors")).unwrap();
    assert!(wa == wb, "final weights identical");
}

#[test]
fn bad_flags_and_missing_data_get_one_clear_line() {
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(common::worker_bin())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["train", "--out", "x", "--batch-size", "lots"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--batch-size") && !err.contains("panicked"),
        "{err}"
    );

    let (code, err) = run(&["train", "--out", "x", "--lr", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--lr") && !err.contains("panicked"), "{err}");

    // An empty data directory and an unreachable archive URL: a download error that names the URL,
    // with the exit code of a machine that lacks the data (a supervising worker gives the job back).
    let empty = out.path().join("empty");
    let (code, err) = run(&[
        "train",
        "--out",
        out.path().join("o").to_str().unwrap(),
        "--data-dir",
        empty.to_str().unwrap(),
        "--data-url",
        "http://127.0.0.1:9/cifar.tar.gz",
    ]);
    assert_eq!(code, Some(worker::EXIT_NO_DATA));
    assert!(
        err.contains("127.0.0.1:9") && err.contains("no CIFAR-10 in") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing half-written"
    );
}

/// `--bf16` autocasts on the CPU too (as `torch.autocast("cpu", torch.bfloat16)`): the run
/// completes with finite losses, and it is not the fp32 run (were autocast not reaching the CPU's
/// kernels, the two would be equal bit for bit).
#[test]
fn bf16_runs_on_the_cpu_and_changes_the_arithmetic() {
    let cfg = worker::config::TrainConfig {
        epochs: 1,
        seed: 5,
        ..common::tiny(DatasetKind::Synthetic)
    };
    let half = worker::config::TrainConfig {
        bf16: true,
        ..cfg.clone()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train::run(&cfg, a.path(), &mut |_| {}).unwrap();
    let bf16 = train::run(&half, b.path(), &mut |_| {}).unwrap();
    let (full, bf16) = (full.final_metrics.unwrap(), bf16.final_metrics.unwrap());
    assert!(
        bf16.train_loss.is_finite() && bf16.test_loss.is_finite(),
        "{bf16:?}"
    );
    assert!(!bf16.bits_eq_ignoring_time(&full), "bf16 changed nothing");
}

/// The step loop never waits on the device: the loss and the divergence flag stay there and are
/// read once per `CHECK_EVERY` steps, so a step dispatches no blocking sync at all.
#[test]
fn a_training_step_blocks_on_nothing() {
    let cfg = worker::config::TrainConfig {
        limit_train: Some(3 * 32),
        ..common::tiny(DatasetKind::Synthetic)
    };
    let count = train::count_step_ops(&cfg).unwrap();
    assert_eq!(count.syncs, 0, "{count:?}");
    assert!(count.top > 100, "the step was counted: {count:?}");
    const { assert!(train::CHECK_EVERY >= 50) };
}

/// Population-based training's continuation: a run stopped after an epoch and resumed with a new
/// lr, momentum and weight decay equals, bit for bit, one run whose `--schedule` changes them at the
/// next epoch (the replay of a member's schedule); the new lr is the schedule's base from there.
#[test]
fn a_resume_with_new_optimiser_settings_equals_that_schedule_in_one_run() {
    use worker::config::{Schedule, ScheduleStep, TrainConfig};
    let cfg = TrainConfig {
        epochs: 6,
        seed: 5,
        limit_train: Some(1024),
        ..common::tiny(DatasetKind::Synthetic)
    };
    let cut = tempfile::tempdir().unwrap();
    let mut child = train_command(&cfg, cut.path()).spawn().unwrap();
    wait_for_epochs(cut.path(), 1);
    // SIGTERM: the trainer commits the epoch it is in and stops there.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let k = common::read_metrics(cut.path()).len() as u32;
    assert!((1..6).contains(&k), "stopped after epoch {k} of 6");

    // Any other change is refused, and leaves the run as it was.
    let other = TrainConfig {
        batch_size: 16,
        ..cfg.clone()
    };
    let refused = Command::new(common::worker_bin())
        .args(other.to_args())
        .arg("--out")
        .arg(cut.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another configuration"), "{said}");
    assert_eq!(common::read_metrics(cut.path()).len() as u32, k);

    let (lr, momentum, weight_decay) = (0.02, 0.5, 1e-3);
    let changed = TrainConfig {
        lr,
        momentum,
        weight_decay,
        ..cfg.clone()
    };
    assert!(
        train_in(&changed, cut.path()).success(),
        "the resume with new settings runs"
    );
    let replay = TrainConfig {
        schedule: Some(Schedule(vec![ScheduleStep {
            epoch: k + 1,
            lr: Some(lr),
            momentum: Some(momentum),
            weight_decay: Some(weight_decay),
        }])),
        ..cfg
    };
    let whole = tempfile::tempdir().unwrap();
    assert!(train_in(&replay, whole.path()).success());
    let (a, b) = (
        common::read_metrics(whole.path()),
        common::read_metrics(cut.path()),
    );
    assert_eq!(
        b.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.bits_eq_ignoring_time(y), "{x:?} != {y:?}");
    }
    // After the change the lr is the new base's (no warm-up left, no milestone passed).
    assert_eq!(b[k as usize].lr, lr);
    let wa = std::fs::read(whole.path().join("checkpoint.safetensors")).unwrap();
    let wb = std::fs::read(cut.path().join("checkpoint.safetensors")).unwrap();
    assert!(wa == wb, "final weights identical");
}

/// `worker train` with `cfg` into `out`, its log dropped.
fn train_command(cfg: &worker::config::TrainConfig, out: &std::path::Path) -> Command {
    let mut c = Command::new(common::worker_bin());
    c.args(cfg.to_args())
        .arg("--out")
        .arg(out)
        .stderr(Stdio::null());
    c
}

/// `worker train` with `cfg` into `out`, to its end: how it exited.
fn train_in(cfg: &worker::config::TrainConfig, out: &std::path::Path) -> std::process::ExitStatus {
    train_command(cfg, out).status().unwrap()
}

/// Until `dir`'s metrics file has `n` epochs (a run's progress, not a fixed time).
fn wait_for_epochs(dir: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::read_metrics(dir).len() < n {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}
