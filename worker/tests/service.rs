//! `worker run` with a real coordinator process and real worker processes, on the CPU: sweeps
//! complete, killed workers and coordinators lose nothing, crashes are retried then failed, cancel
//! stops a job, and packed jobs share a device without oversubscribing threads.
mod cluster;
mod common;

use cluster::*;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The tiny network on synthetic data: no files needed, a second or two per epoch.
fn tiny_train(epochs: u32) -> Value {
    json!({"dataset": "synthetic", "epochs": epochs, "model_widths": [8, 16, 32, 64], "model_depth": 1, "model_heads": 2,
           "limit_train": 256, "limit_test": 100, "warmup_epochs": 0})
}

/// Submits `spec` to a fresh coordinator and drains it with one `worker run --cpu-ranks 2`.
fn drain(spec: Value) -> (tempfile::TempDir, Coordinator, Value) {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(spec);
    let mut w = worker(
        &c.url,
        &dir.path().join("w"),
        &["--cpu-ranks", "2", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    (dir, c, s)
}

#[test]
fn a_four_job_sweep_completes_with_every_epoch_recorded() {
    let _serial = serial();
    // Learning rates at which the tiny network trains stably. (lr 0.05 at batch 64 was chaotic: its
    // outcome depended on the CPU's kernels, and on an AMD EPYC it scored exactly 0.) What is asserted
    // holds on any machine: statuses, the epochs recorded, and an accuracy that is a fraction.
    let (_dir, c, s) = drain(
        json!({"name": "four", "train": tiny_train(2), "grid": {"lr": [0.01, 0.002], "batch_size": [32, 64]}}),
    );
    let jobs = s["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    for j in jobs {
        assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
        assert_eq!(epochs_of(&c, j["id"].as_i64().unwrap()), vec![1, 2]);
        assert_eq!(j["summary"]["status"], JobStatus::Completed.as_str());
        let acc = j["latest"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{j}");
    }
}

#[test]
fn a_two_rank_job_trains_data_parallel_on_two_slots() {
    let _serial = serial();
    let mut train = tiny_train(2);
    train["nproc_per_node"] = json!(2);
    let (_dir, c, s) = drain(json!({"name": "ddp", "train": train, "grid": {"batch_size": [16]}}));
    let j = &s["jobs"][0];
    assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
    assert_eq!(epochs_of(&c, j["id"].as_i64().unwrap()), vec![1, 2]);
    // The summary comes from rank 0 of a world of two whose replicas stayed identical.
    assert_eq!(j["summary"]["world_size"], 2, "{j}");
    assert_eq!(j["summary"]["rank_param_max_diff"], 0.0, "{j}");
}

#[test]
fn a_killed_workers_job_is_resumed_from_its_checkpoint_by_another() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 2);
    let mut train = tiny_train(5);
    train["limit_train"] = json!(1024);
    train["seed"] = json!(5);
    let sweep = c.submit(json!({"name": "resume", "train": train.clone()}));
    let mut a = worker(&c.url, &dir.path().join("a"), &["--cpu-ranks", "1"]);
    // Wait for epoch 2's checkpoint to be on the coordinator, then kill the worker outright. The
    // checkpoint is written off the critical path, so it can arrive after its epoch's metrics: read
    // the epoch inside the uploaded checkpoint, not the job's.
    let mut stall = Stall::new(STALL);
    let saved = dir.path().join("uploaded.safetensors");
    let job = loop {
        let s = c.get(&format!("/api/sweeps/{sweep}"));
        let j = &s["jobs"][0];
        if j["epoch"].as_i64().unwrap_or(0) >= 2 {
            let id = j["id"].as_i64().unwrap();
            // Checkpoints are read by their lease holder or the admin.
            let get = ureq::get(&format!("{}/api/jobs/{id}/checkpoint", c.url))
                .set("Authorization", &format!("Bearer {TOKEN}"));
            if let Ok(r) = get.call() {
                let mut bytes = vec![];
                std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
                std::fs::write(&saved, bytes).unwrap();
                if worker::checkpoint::read_resume_meta(&saved).is_ok_and(|m| m.epoch >= 2) {
                    break id;
                }
            }
        }
        stall.check(&s, "no checkpoint of epoch 2");
        std::thread::sleep(Duration::from_millis(100));
    };
    a.kill().unwrap();
    a.wait().unwrap();
    let mut b = worker(
        &c.url,
        &dir.path().join("b"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    b.wait().unwrap();
    assert_eq!(s["jobs"][0]["status"], JobStatus::Completed.as_str());
    assert_eq!(
        epochs_of(&c, job),
        vec![1, 2, 3, 4, 5],
        "each epoch exactly once"
    );
    let detail = c.get(&format!("/api/jobs/{job}"));
    // Each stored epoch names the attempt that computed it: the resumed attempt restored epochs 1-2
    // (at least) from the checkpoint and did not send them again.
    for m in detail["metrics"].as_array().unwrap() {
        if m["epoch"].as_i64().unwrap() <= 2 {
            assert_eq!(m["attempt"], 1, "restored epoch re-sent: {m}");
        }
    }
    assert!(detail["metrics"][4]["attempt"].as_i64().unwrap() >= 2);
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "lease expired");
    assert_eq!(
        attempts.last().unwrap()["outcome"],
        JobStatus::Completed.as_str()
    );
    assert!(detail["attempt"].as_i64().unwrap() >= 2);
    // Resumed, not restarted: the second worker's trainer began after epoch 2 or later, and the final
    // numbers are those of an uninterrupted run with the same settings (2 threads, as the worker gave it).
    let mut cfg: worker::config::TrainConfig = serde_json::from_value(train).unwrap();
    cfg.threads = Some(2);
    let straight = tempfile::tempdir().unwrap();
    worker::train::run(&cfg, straight.path(), &mut |_| {}).unwrap();
    let want = common::read_metrics(straight.path());
    let got = detail["metrics"].as_array().unwrap();
    for (w, g) in want.iter().zip(got) {
        assert_eq!(
            g["accuracy"].as_f64().unwrap(),
            w.accuracy,
            "epoch {}",
            w.epoch
        );
        assert_eq!(
            g["test_loss"].as_f64().unwrap(),
            w.test_loss,
            "epoch {}",
            w.epoch
        );
    }
}

/// A coordinator with a lease shorter than the worker's `--heartbeat-seconds`: the worker follows
/// the lease it was granted (a third of it), so its job is never lost to lease churn.
#[test]
fn a_short_lease_does_not_cost_a_healthy_worker_its_job() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 3);
    let mut train = tiny_train(6);
    train["limit_train"] = json!(1024);
    let sweep = c.submit(json!({"name": "short-lease", "train": train}));
    // The default --heartbeat-seconds (5) is longer than the 3-second lease.
    let mut w = worker_beating(
        &c.url,
        &dir.path().join("w"),
        None,
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    let j = &s["jobs"][0];
    assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
    assert_eq!(j["attempt"], 1, "never lost its lease: {j}");
    let job = j["id"].as_i64().unwrap();
    assert_eq!(epochs_of(&c, job), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_coordinator_killed_and_restarted_mid_sweep_loses_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut c = Coordinator::start(&db, "127.0.0.1:0", 30);
    let port = c.port();
    let mut train = tiny_train(4);
    train["limit_train"] = json!(768);
    let sweep = c.submit(json!({"name": "restart", "train": train, "grid": {"seed": [1, 2]}}));
    let mut w = worker(
        &c.url,
        &dir.path().join("w"),
        &["--cpu-ranks", "2", "--exit-when-idle"],
    );
    c.wait_first_epoch(sweep);
    c.kill(); // SIGKILL
    std::thread::sleep(Duration::from_secs(3)); // training goes on; writes wait in the workers' outboxes
    let c = Coordinator::start(&db, &format!("127.0.0.1:{port}"), 30);
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    for j in s["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
        assert_eq!(epochs_of(&c, j["id"].as_i64().unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(j["attempt"], 1, "no lease was lost to the restart");
    }
}

#[test]
fn a_crashing_trainer_is_retried_then_failed_with_its_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let mut train = tiny_train(2);
    // A relative name under the worker's --work-dir (absolute paths are refused at submit).
    train["init_from"] = json!("nonexistent/weights.safetensors");
    let sweep = c.submit(json!({"name": "crash", "train": train, "run": {"max_attempts": 2}}));
    let mut w = worker(&c.url, &dir.path().join("w"), &["--exit-when-idle"]);
    let s = c.wait_sweep(sweep, STALL);
    w.wait().unwrap();
    let job = &s["jobs"][0];
    assert_eq!(job["status"], JobStatus::Failed.as_str());
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("nonexistent/weights.safetensors"),
        "{}",
        job["error"]
    );
    let d = c.get(&format!("/api/jobs/{}", job["id"]));
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried once");
    assert!(attempts
        .iter()
        .all(|a| a["outcome"] == JobStatus::Failed.as_str()));
}

#[test]
fn cancel_stops_a_running_job_within_seconds() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({"name": "cancel", "train": tiny_train(200)}));
    let mut w = worker(&c.url, &dir.path().join("w"), &["--exit-when-idle"]);
    c.wait_first_epoch(sweep);
    let asked = Instant::now();
    c.post(&format!("/api/sweeps/{sweep}/cancel"), json!({}));
    // The sweep shows cancelled at once; its running job ends when the worker has stopped it.
    let s = loop {
        let s = c.get(&format!("/api/sweeps/{sweep}"));
        if s["jobs"][0]["status"] == JobStatus::Cancelled.as_str() {
            break s;
        }
        assert!(asked.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = asked.elapsed();
    assert!(w.wait().unwrap().success());
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
    assert!(s["jobs"][0]["epoch"].as_i64().unwrap() < 200);
}

#[test]
fn packed_jobs_share_a_slot_concurrently_without_oversubscribing_threads() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let mut train = tiny_train(3);
    train["limit_train"] = json!(768);
    let sweep = c.submit(json!({"name": "pack", "train": train, "grid": {"seed": [1, 2]}}));
    let mut w = worker(
        &c.url,
        &dir.path().join("w"),
        &[
            "--cpu-ranks",
            "1",
            "--slots-per-device",
            "2",
            "--pack-max-batch",
            "64",
            "--exit-when-idle",
        ],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    let cores = std::thread::available_parallelism().unwrap().get() as i64;
    let jobs = s["jobs"].as_array().unwrap();
    let threads: i64 = jobs
        .iter()
        .map(|j| j["summary"]["threads"].as_i64().unwrap())
        .sum();
    assert!(
        threads <= cores.max(2),
        "{threads} threads on {cores} cores"
    );
    // Concurrent: each started before the other finished.
    let (a, b) = (&jobs[0], &jobs[1]);
    let (sa, fa, sb, fb) = (
        a["started_at"].as_i64().unwrap(),
        a["finished_at"].as_i64().unwrap(),
        b["started_at"].as_i64().unwrap(),
        b["finished_at"].as_i64().unwrap(),
    );
    assert!(
        sa < fb && sb < fa,
        "the two jobs ran one after the other: {sa}-{fa} and {sb}-{fb}"
    );
}

#[test]
fn sigterm_makes_a_worker_checkpoint_give_its_job_back_and_exit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let mut train = tiny_train(6);
    train["limit_train"] = json!(1024);
    let sweep = c.submit(json!({"name": "term", "train": train}));
    let mut a = worker(&c.url, &dir.path().join("a"), &["--cpu-ranks", "1"]);
    c.wait_first_epoch(sweep);
    // SAFETY: kill(2) on a child process of this test.
    unsafe { libc::kill(a.0.id() as i32, libc::SIGTERM) };
    assert!(a.wait().unwrap().success(), "the worker exits cleanly");
    let job = c.get(&format!("/api/sweeps/{sweep}"))["jobs"][0].clone();
    assert_eq!(
        job["status"],
        JobStatus::Pending.as_str(),
        "given back, not failed: {job}"
    );
    let id = job["id"].as_i64().unwrap();
    let d = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(d["attempts"][0]["outcome"], "released");
    assert!(
        ureq::get(&format!("{}/api/jobs/{id}/checkpoint", c.url))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .is_ok(),
        "its last epoch was uploaded"
    );
    let mut b = worker(
        &c.url,
        &dir.path().join("b"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    b.wait().unwrap();
    assert_eq!(s["jobs"][0]["status"], JobStatus::Completed.as_str());
    assert_eq!(epochs_of(&c, id), vec![1, 2, 3, 4, 5, 6]);
}

/// Preemption (Slurm's `scancel`: SIGTERM, then SIGKILL after `KillWait`): an epoch that does not
/// commit within `--stop-grace-seconds` is given up, and the job is given back (released, not failed
/// or expired) before the worker exits.
#[test]
fn a_shutdown_mid_epoch_gives_the_job_back_within_the_grace() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let mut train = tiny_train(1);
    // An epoch of tens of seconds: 20,000 images two at a time.
    train["limit_train"] = json!(20000);
    train["batch_size"] = json!(2);
    let sweep = c.submit(json!({"name": "preempt", "train": train}));
    let mut a = worker(
        &c.url,
        &dir.path().join("a"),
        &["--cpu-ranks", "1", "--stop-grace-seconds", "1"],
    );
    // Until the trainer trains: its log says the data is loaded.
    let mut stall = Stall::new(STALL);
    loop {
        let log = ureq::get(&format!("{}/api/jobs/1/log", c.url))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        if log.contains("data loaded") {
            break;
        }
        stall.check(
            &c.get(&format!("/api/sweeps/{sweep}")),
            "the trainer did not start",
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on a child process of this test.
    unsafe { libc::kill(a.0.id() as i32, libc::SIGTERM) };
    assert!(a.wait().unwrap().success(), "the worker exits cleanly");
    let job = c.get(&format!("/api/sweeps/{sweep}"))["jobs"][0].clone();
    assert_eq!(
        job["status"],
        JobStatus::Pending.as_str(),
        "given back: {job}"
    );
    assert_eq!(
        job["epoch"], 0,
        "its epoch was not finished but given up: {job}"
    );
    let d = c.get(&format!("/api/jobs/{}", job["id"]));
    assert_eq!(d["attempts"][0]["outcome"], "released", "{d}");
    assert_eq!(
        (job["attempt"].as_i64(), job["max_attempts"].as_i64()),
        (Some(1), Some(4)),
        "the release did not use up one of the 3 attempts: {job}"
    );
}

#[test]
fn a_worker_that_lost_its_lease_stops_its_trainer_and_the_job_is_recorded_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 2);
    let mut train = tiny_train(6);
    train["limit_train"] = json!(1024);
    let sweep = c.submit(json!({"name": "frozen", "train": train}));
    let mut a = worker(
        &c.url,
        &dir.path().join("a"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    c.wait_first_epoch(sweep);
    // Freeze the worker (not its trainer) past its lease: the coordinator requeues the job, and the
    // worker's next write after waking gets 409.
    let pid = a.0.id() as i32;
    // SAFETY: signals to a child process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The lease has expired once the job is no longer `running` under attempt 1 (it is pending
    // again: a claim, not the expiry, takes the next attempt number).
    let t0 = Instant::now();
    while c.get(&format!("/api/sweeps/{sweep}"))["jobs"][0]["status"] == JobStatus::Running.as_str()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "lease never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let s = c.wait_sweep(sweep, STALL);
    assert!(a.wait().unwrap().success());
    let job = &s["jobs"][0];
    assert_eq!(job["status"], JobStatus::Completed.as_str());
    let id = job["id"].as_i64().unwrap();
    assert_eq!(epochs_of(&c, id), vec![1, 2, 3, 4, 5, 6], "each epoch once");
    let d = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(d["attempts"][0]["outcome"], "lease expired");
    assert_eq!(
        d["attempts"].as_array().unwrap().last().unwrap()["outcome"],
        JobStatus::Completed.as_str()
    );
}

/// ASHA stops the worse job at its first rung: the coordinator says so in the metrics reply, the
/// worker stops the trainer the way SIGTERM does, and the job ends `pruned` within one epoch with
/// its epochs kept. The rule judges the reported lr (higher is "better" here): a metric that is
/// the same on every machine, so the decision is too.
#[test]
fn asha_stops_the_worse_job_within_one_epoch_and_it_ends_pruned() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({
        "name": "asha", "train": tiny_train(6), "grid": {"lr": [0.01, 0.001]},
        "early_stop": {"method": "asha", "metric": "lr", "mode": "max", "min_epochs": 1, "reduction_factor": 2},
    }));
    // One rank: the jobs run one after the other, the better one first (it is alone at each rung).
    let mut w = worker(
        &c.url,
        &dir.path().join("w"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    let (good, bad) = (&s["jobs"][0], &s["jobs"][1]);
    assert_eq!(good["status"], JobStatus::Completed.as_str(), "{good}");
    assert_eq!(
        epochs_of(&c, good["id"].as_i64().unwrap()),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(bad["status"], JobStatus::Pruned.as_str(), "{bad}");
    // Judged at epoch 1; the trainer then finishes the epoch it is in. How many epochs that is
    // depends on how fast this machine runs a tiny epoch next to the worker's poll, so what holds
    // everywhere is: a prefix of the epochs, stopped before the budget.
    let kept = epochs_of(&c, bad["id"].as_i64().unwrap());
    assert!(
        kept.len() < 6 && kept == (1..=kept.len() as i64).collect::<Vec<_>>(),
        "{kept:?}"
    );
    assert_eq!(bad["epoch"].as_i64(), kept.last().copied());
    assert_eq!(s["pruned"], 1);
    assert_eq!(s["epochs_budget"], 12);
    assert_eq!(
        s["epochs_spent"].as_i64(),
        Some(6 + kept.len() as i64),
        "{s}"
    );
    let detail = c.get(&format!("/api/jobs/{}", bad["id"]));
    assert_eq!(
        detail["attempts"][0]["outcome"],
        JobStatus::Pruned.as_str(),
        "{detail}"
    );
}
