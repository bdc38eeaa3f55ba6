//! Command jobs with real processes: `worker run --allow-commands` runs a Python program (no torch:
//! `fixtures/job.py`) under the environment contract, next to a real coordinator process. Every
//! epoch is recorded once, a killed worker's job resumes from its checkpoint directory elsewhere,
//! failures are retried then failed with their log, cancel and early stop reach the program
//! through its stop file then SIGTERM, placeholders never split into more arguments, a worker
//! without --allow-commands never takes one, and every job's log survives a coordinator restart.
mod cluster;

use cluster::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use worker::service::allocation::now_ms;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `worker run` that runs command jobs from the fixtures directory.
fn command_worker(url: &str, work: &Path, extra: &[&str]) -> Worker {
    let root = fixtures();
    let mut args = vec![
        "--allow-commands",
        "--command-root",
        root.to_str().unwrap(),
        "--stop-grace-seconds",
        "1",
    ];
    args.extend_from_slice(extra);
    worker(url, work, &args)
}

/// `job.py` with the given arguments after the script.
fn job_py(args: &[&str]) -> Value {
    let mut argv = vec!["python3", "job.py"];
    argv.extend_from_slice(args);
    json!({ "argv": argv })
}

fn log_of(c: &Coordinator, job: i64, attempt: Option<i64>) -> String {
    let mut url = format!("{}/api/jobs/{job}/log", c.url);
    if let Some(a) = attempt {
        url.push_str(&format!("?attempt={a}"));
    }
    ureq::get(&url).call().unwrap().into_string().unwrap()
}

/// Drains `sweep` with a command worker that exits when idle; its only job must have failed: that
/// job and its error.
fn only_job_failed(c: &Coordinator, sweep: i64, work: &Path) -> (Value, String) {
    let mut w = command_worker(&c.url, work, &["--exit-when-idle"]);
    let s = c.wait_sweep(sweep, STALL);
    w.wait().unwrap();
    let j = s["jobs"][0].clone();
    assert_eq!(j["status"], JobStatus::Failed.as_str(), "{j}");
    let error = j["error"].as_str().unwrap().to_string();
    (j, error)
}

fn lines_of(log: &str) -> Vec<&str> {
    log.lines().collect()
}

fn job_ids(s: &Value) -> Vec<i64> {
    s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_command_grid_completes_with_every_epoch_its_own_metrics_and_its_log() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    // A value that a shell would split, and placeholders inside a value: each stays one argument.
    let hostile = "x --fail; echo {epochs} $(touch pwned)";
    let sweep = c.submit(json!({
        "name": "cmd",
        "command": job_py(&["--epochs", "{epochs}", "--score={score}", "--tag", "{tag}", "--sleep", "0.05"]),
        "train": {"epochs": 3},
        "grid": {"score": [0.25, 0.5], "tag": ["plain", hostile]},
    }));
    let mut w = command_worker(
        &c.url,
        &dir.path().join("w"),
        &["--cpu-ranks", "2", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    for (j, id) in s["jobs"].as_array().unwrap().iter().zip(job_ids(&s)) {
        assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
        assert_eq!(epochs_of(&c, id), vec![1, 2, 3], "every epoch once");
        let detail = c.get(&format!("/api/jobs/{id}"));
        let score = j["params"]["score"].as_f64().unwrap();
        for m in detail["metrics"].as_array().unwrap() {
            let epoch = m["epoch"].as_f64().unwrap();
            assert_eq!(m["extra"]["score"].as_f64(), Some(score * epoch), "{m}");
            assert_eq!(m["accuracy"].as_f64(), Some(score));
        }
        let log = log_of(&c, id, None);
        let tag = j["params"]["tag"].as_str().unwrap();
        let argv = json!([
            "--epochs",
            "3",
            format!("--score={score}"),
            "--tag",
            tag,
            "--sleep",
            "0.05"
        ]);
        let lines = lines_of(&log);
        assert_eq!(
            serde_json::from_str::<Value>(lines[0].trim_start_matches("argv=")).unwrap(),
            argv,
            "{log}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(lines[1].trim_start_matches("params=")).unwrap(),
            j["params"]
        );
        assert_eq!(
            &lines[2..],
            ["epoch 1 line 0", "epoch 2 line 0", "epoch 3 line 0", "done"],
            "{log}"
        );
    }
    assert!(!fixtures().join("pwned").exists());
}

#[test]
fn a_command_job_resumes_from_its_checkpoint_directory_after_its_worker_is_killed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 2);
    let sweep = c.submit(json!({
        "name": "resume", "command": job_py(&["--epochs", "{epochs}", "--sleep", "0.4"]),
        "train": {"epochs": 8},
    }));
    let mut a = command_worker(&c.url, &dir.path().join("a"), &["--cpu-ranks", "1"]);
    let mut stall = Stall::new(STALL);
    let job = loop {
        let s = c.get(&format!("/api/sweeps/{sweep}"));
        let j = &s["jobs"][0];
        let id = j["id"].as_i64().unwrap();
        if j["epoch"].as_i64().unwrap_or(0) >= 2
            && ureq::get(&format!("{}/api/jobs/{id}/checkpoint", c.url))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .call()
                .is_ok()
        {
            break id;
        }
        stall.check(&s, "no checkpoint of epoch 2");
        std::thread::sleep(Duration::from_millis(50));
    };
    a.kill().unwrap(); // SIGKILL: the program dies with it
    a.wait().unwrap();
    let mut b = command_worker(
        &c.url,
        &dir.path().join("b"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    b.wait().unwrap();
    assert_eq!(s["jobs"][0]["status"], JobStatus::Completed.as_str(), "{s}");
    assert_eq!(epochs_of(&c, job), (1..=8).collect::<Vec<_>>());
    let detail = c.get(&format!("/api/jobs/{job}"));
    let metrics = detail["metrics"].as_array().unwrap();
    // The second attempt started from the uploaded directory, not from scratch: the epochs it
    // computed say so, and the epochs it restored keep the first attempt's record.
    let resumed: Vec<&Value> = metrics.iter().filter(|m| m["attempt"] != 1).collect();
    assert!(!resumed.is_empty());
    let from = resumed[0]["extra"]["resumed_from"].as_f64().unwrap();
    assert!(from >= 2.0, "{detail}");
    for m in metrics {
        let from_first = m["epoch"].as_f64().unwrap() <= from;
        assert_eq!(m["attempt"] == 1, from_first, "{m}");
    }
    let second = detail["attempts"].as_array().unwrap().last().unwrap()["attempt"]
        .as_i64()
        .unwrap();
    assert!(log_of(&c, job, Some(second)).contains(&format!("resumed after epoch {from}")));
}

#[test]
fn a_failing_command_is_retried_then_failed_with_its_log_tail() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({
        "name": "fail", "command": job_py(&["--fail"]), "run": {"max_attempts": 2},
    }));
    let (j, error) = only_job_failed(&c, sweep, &dir.path().join("w"));
    assert!(error.contains("command exited with code 1"), "{error}");
    assert!(error.contains("boom: the program cannot go on"), "{error}");
    let id = j["id"].as_i64().unwrap();
    let d = c.get(&format!("/api/jobs/{id}"));
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried once: {d}");
    for a in attempts {
        assert_eq!(a["outcome"], JobStatus::Failed.as_str());
        assert!(log_of(&c, id, a["attempt"].as_i64()).contains("boom"));
    }
}

#[test]
fn cancel_and_early_stop_reach_a_command_through_its_stop_file_then_sigterm() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    // Cancel: one program leaves at its stop file, the other ignores it and gets SIGTERM.
    let sweep = c.submit(json!({
        "name": "cancel", "command": job_py(&["--epochs", "1000", "--sleep", "0.1", "{mode}"]),
        "grid": {"mode": ["--lines=1", "--ignore-stop"]},
    }));
    let w = command_worker(&c.url, &dir.path().join("w"), &["--cpu-ranks", "2"]);
    let mut stall = Stall::new(STALL);
    loop {
        let s = c.get(&format!("/api/sweeps/{sweep}"));
        if s["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["epoch"].as_i64().unwrap_or(0) >= 1)
        {
            break;
        }
        stall.check(&s, "both jobs running");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.post(&format!("/api/sweeps/{sweep}/cancel"), json!({}));
    let s = c.wait_sweep(sweep, STALL);
    let mut stall = Stall::new(STALL);
    let s = loop {
        let s2 = c.get(&format!("/api/sweeps/{sweep}"));
        if s2["running"] == 0 {
            break s2;
        }
        stall.check(&s, "jobs still running after the cancel");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids = job_ids(&s);
    for j in s["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], JobStatus::Cancelled.as_str(), "{j}");
    }
    assert!(log_of(&c, ids[0], None).contains("saw the stop file"));
    let ignored = log_of(&c, ids[1], None);
    assert!(
        ignored.contains("got SIGTERM") && !ignored.contains("saw the stop file"),
        "{ignored}"
    );

    // Early stop on a metric of the program's own: the worse job is told through its stop file
    // (epochs long enough that the stop, decided on epoch 1, reaches it before epoch 3 ends).
    let sweep = c.submit(json!({
        "name": "asha", "command": job_py(&["--epochs", "{epochs}", "--score={score}", "--sleep", "0.5"]),
        "train": {"epochs": 4}, "grid": {"score": [0.9, 0.1]},
        "early_stop": {"method": "asha", "metric": "score", "mode": "max", "min_epochs": 1, "reduction_factor": 2},
    }));
    drop(w);
    // One rank: the better job runs first and alone at each rung; the worse one is judged after it.
    let mut w = command_worker(
        &c.url,
        &dir.path().join("w2"),
        &["--cpu-ranks", "1", "--exit-when-idle"],
    );
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    let (good, bad) = (&s["jobs"][0], &s["jobs"][1]);
    assert_eq!(good["status"], JobStatus::Completed.as_str(), "{good}");
    assert_eq!(bad["status"], JobStatus::Pruned.as_str(), "{bad}");
    // Stopped before its budget (how many epochs it finished depends on this machine's speed).
    let kept = epochs_of(&c, bad["id"].as_i64().unwrap());
    assert!(
        kept.len() < 4 && kept == (1..=kept.len() as i64).collect::<Vec<_>>(),
        "{kept:?}"
    );
    assert!(log_of(&c, bad["id"].as_i64().unwrap(), None).contains("saw the stop file"));
}

#[test]
fn a_worker_without_allow_commands_never_claims_a_command_job() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({"name": "cmd", "command": job_py(&[])}));
    let _w = worker(&c.url, &dir.path().join("w"), &[]);
    // Until the worker has asked (and been told nothing) several times.
    let empty_claims = || {
        let text = ureq::get(&format!("{}/metrics", c.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("sweep_empty_claims_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut stall = Stall::new(STALL);
    while empty_claims() < 5.0 {
        stall.check(&json!({"claims": empty_claims()}), "the worker never asked");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = c.get(&format!("/api/sweeps/{sweep}"));
    assert_eq!(s["jobs"][0]["status"], JobStatus::Pending.as_str(), "{s}");
    assert_eq!(s["jobs"][0]["attempt"], 0, "{s}");
}

#[test]
fn every_jobs_log_is_complete_and_in_order_after_coordinator_restarts() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut c = Coordinator::start(&db, "127.0.0.1:0", 30);
    let port = c.port();
    let cmd = c.submit(json!({
        "name": "chatty", "command": job_py(&["--epochs", "{epochs}", "--lines", "40", "--sleep", "0.4"]),
        "train": {"epochs": 8},
    }));
    let train = c.submit(json!({"name": "ours", "train": {
        "dataset": "synthetic", "epochs": 3, "model_widths": [8, 16, 32, 64], "model_depth": 1,
        "model_heads": 2, "limit_train": 256, "limit_test": 100, "warmup_epochs": 0}}));
    let mut w = command_worker(
        &c.url,
        &dir.path().join("w"),
        &["--cpu-ranks", "2", "--exit-when-idle"],
    );
    c.wait_first_epoch(cmd);
    c.kill(); // SIGKILL: output goes on piling up in the worker's outbox
    std::thread::sleep(Duration::from_secs(2));
    c = Coordinator::start(&db, &format!("127.0.0.1:{port}"), 30);
    c.wait_sweep(cmd, STALL);
    c.wait_sweep(train, STALL);
    assert!(w.wait().unwrap().success());
    c.kill();
    let c = Coordinator::start(&db, "127.0.0.1:0", 30);

    let id = job_ids(&c.get(&format!("/api/sweeps/{cmd}")))[0];
    let log = log_of(&c, id, None);
    let mut expected: Vec<String> = (1..=8)
        .flat_map(|e| (0..40).map(move |i| format!("epoch {e} line {i}")))
        .collect();
    expected.push("done".into());
    assert_eq!(lines_of(&log)[2..], expected, "every line once, in order");

    // `server logs` prints the same bytes.
    let printed = std::process::Command::new(server_bin())
        .args([
            "logs",
            &id.to_string(),
            "--server",
            &c.url,
            "--token",
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), log);

    let id = job_ids(&c.get(&format!("/api/sweeps/{train}")))[0];
    let log = log_of(&c, id, None);
    let epochs: Vec<&str> = log.lines().filter(|l| l.contains("epoch done")).collect();
    assert_eq!(epochs.len(), 3, "{log}");
    for (i, line) in epochs.iter().enumerate() {
        assert!(line.contains(&format!("epoch={}", i + 1)), "{line}");
    }
}

/// #24 finding 3: a command job gets the contract's variables and an allowlist, not the worker's
/// environment: the worker's token and coordinator address stay out of the program (and so out of
/// its log), unless the operator passes a variable by name. Slurm's variables and torchrun's
/// rendezvous (#23) are in the contract.
#[test]
fn a_command_job_gets_the_allowlist_not_the_workers_secrets() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({"name": "env", "command": {"argv": ["env"]}}));
    let mut w = Worker(
        std::process::Command::new(worker_bin())
            .args([
                "run",
                "--idle-seconds",
                "0.2",
                "--exit-when-idle",
                "--allow-commands",
            ])
            .args(["--pass-env", "KEEP_ME", "--work-dir"])
            .arg(dir.path().join("w"))
            .arg("--command-root")
            .arg(fixtures())
            .env("SWEEP_SERVER", &c.url)
            .env("SWEEP_TOKEN", TOKEN)
            .env("KEEP_ME", "kept")
            .env("OTHER_SECRET", "leaked")
            .env("SLURM_JOB_ID", "77")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let s = c.wait_sweep(sweep, Duration::from_secs(60));
    assert!(w.wait().unwrap().success());
    let job = job_ids(&s)[0];
    let log = log_of(&c, job, None);
    assert!(log.contains("KEEP_ME=kept"), "{log}");
    assert!(log.contains("PATH="), "{log}");
    assert!(log.contains(&format!("SWEEP_JOB_ID={job}")), "{log}");
    // Slurm's variables pass, and torchrun's rendezvous is set (a single-node job: this machine).
    for set in [
        "SLURM_JOB_ID=77",
        "MASTER_ADDR=127.0.0.1",
        "NNODES=1",
        "NODE_RANK=0",
        "MASTER_PORT=",
    ] {
        assert!(
            log.contains(set),
            "{set} is not in the program's environment: {log}"
        );
    }
    for secret in ["SWEEP_TOKEN", "SWEEP_SERVER", "OTHER_SECRET", TOKEN] {
        assert!(!log.contains(secret), "{secret} reached the program: {log}");
    }
}

/// #24 finding 6: the metrics file is read as bytes, line by line: a line that is not UTF-8 and one
/// far too long are skipped with a note in the job's log, and the lines after them still count.
#[test]
fn bad_metrics_lines_are_skipped_and_the_lines_after_them_count() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    // Braces as printf's octal escapes: a `{...}` in argv would be a placeholder.
    let script = r#"m="$SWEEP_METRICS"
printf '\173"epoch": 1, "accuracy": 0.5\175\n\377\376 not text\n\173"epoch": 2, "accuracy": 0.6\175\n' >> "$m"
head -c 300000 /dev/zero | tr '\0' 'x' >> "$m"
printf '\n\173"epoch": 3, "accuracy": 0.7\175\n' >> "$m""#;
    let sweep = c.submit(json!({
        "name": "bad-lines",
        "command": {"argv": ["sh", "-c", script]},
        "train": {"epochs": 3},
    }));
    let mut w = command_worker(&c.url, &dir.path().join("w"), &["--exit-when-idle"]);
    let s = c.wait_sweep(sweep, STALL);
    assert!(w.wait().unwrap().success());
    let job = job_ids(&s)[0];
    assert_eq!(s["jobs"][0]["status"], JobStatus::Completed.as_str(), "{s}");
    assert_eq!(
        epochs_of(&c, job),
        vec![1, 2, 3],
        "the lines after the bad ones count"
    );
    let log = log_of(&c, job, None);
    assert!(log.contains("not UTF-8: skipped"), "{log}");
    assert!(log.contains("longer than 65536 bytes: skipped"), "{log}");
}

/// A checkpoint archive whose `checkpoint` entry is a link out of the job's directory (any lease
/// holder could upload one) is never restored: the next worker fails the attempt saying why, and
/// never runs the program in it (which would have archived and uploaded the link's target).
#[test]
fn a_checkpoint_archive_with_a_link_is_refused_with_its_entry_named() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({
        "name": "link", "command": job_py(&["--epochs", "{epochs}"]), "train": {"epochs": 2},
        "run": {"max_attempts": 1},
    }));
    // A worker-token holder claims the job, uploads the archive and gives the job back.
    let claim: Value = ureq::post(&format!("{}/api/jobs/claim", c.url))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(json!({"worker": "intruder", "accepts_commands": true}))
        .unwrap()
        .into_json()
        .unwrap();
    let (id, secret) = (
        claim["id"].as_i64().unwrap(),
        claim["lease_secret"].as_str().unwrap().to_string(),
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_link_name(dir.path()).unwrap();
    tar.append_data(&mut h, "checkpoint", std::io::empty())
        .unwrap();
    let archive = tar.into_inner().unwrap();
    let write = |req: ureq::Request| {
        req.set("Authorization", &format!("Bearer {TOKEN}"))
            .set(protocol::LEASE_SECRET_HEADER, &secret)
    };
    write(ureq::put(&format!(
        "{}/api/jobs/{id}/checkpoint?attempt=1",
        c.url
    )))
    .send_bytes(&archive)
    .unwrap();
    write(ureq::post(&format!("{}/api/jobs/{id}/release", c.url)))
        .send_json(json!({"attempt": 1, "reason": "done"}))
        .unwrap();
    let (_, error) = only_job_failed(&c, sweep, &dir.path().join("w"));
    assert!(error.contains("`checkpoint` is a symbolic link"), "{error}");
    assert!(epochs_of(&c, id).is_empty(), "the program never ran");
}

/// A worker that knows its end (`--end-time`, 40 s ahead) gives its command job back before it:
/// the program commits the epoch it is in and leaves through its stop file, the job is released
/// (pending again, no attempt used) and the worker exits 0 before its end; a second worker resumes
/// the job from its checkpoint directory, every epoch recorded once.
#[test]
fn a_worker_gives_its_job_back_before_its_end_time_and_the_next_resumes_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 10);
    let sweep = c.submit(json!({
        "name": "ends", "command": job_py(&["--epochs", "{epochs}", "--sleep", "5"]),
        "train": {"epochs": 8},
    }));
    let end = now_ms() + 40_000;
    let root = fixtures();
    let end_arg = (end / 1000).to_string();
    // Give back at the end less 4 s of margin and 6 s of grace (longer than an epoch).
    let mut a = worker(
        &c.url,
        &dir.path().join("a"),
        &[
            "--allow-commands",
            "--command-root",
            root.to_str().unwrap(),
            "--end-time",
            &end_arg,
            "--end-margin-seconds",
            "4",
            "--stop-grace-seconds",
            "6",
        ],
    );
    let status = a.wait().unwrap();
    let exited = now_ms();
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(status.success(), "the worker exits 0: {log}");
    assert!(exited < end - (end % 1000), "it left before its end: {log}");
    assert!(
        log.contains("left in the allocation") || log.contains("allocation ends in"),
        "{log}"
    );

    let s = c.get(&format!("/api/sweeps/{sweep}"));
    let job = &s["jobs"][0];
    assert_eq!(job["status"], JobStatus::Pending.as_str(), "{s}");
    let id = job["id"].as_i64().unwrap();
    let left = job["max_attempts"].as_i64().unwrap() - job["attempt"].as_i64().unwrap();
    assert_eq!(left, 3, "no attempt used by the give-back: {job}");
    let first = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(first["attempts"][0]["outcome"], "released", "{first}");
    let done_first = epochs_of(&c, id);
    assert!(
        done_first.len() >= 4 && done_first.len() < 8,
        "most of 30 s of 5 s epochs were committed before the give-back: {first}"
    );
    let mut b = command_worker(&c.url, &dir.path().join("b"), &["--exit-when-idle"]);
    let s = c.wait_sweep(sweep, STALL);
    b.wait().unwrap();
    assert_eq!(s["jobs"][0]["status"], JobStatus::Completed.as_str(), "{s}");
    assert_eq!(
        epochs_of(&c, id),
        (1..=8).collect::<Vec<_>>(),
        "every epoch once"
    );
    let detail = c.get(&format!("/api/jobs/{id}"));
    let resumed = detail["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["attempt"] != 1)
        .unwrap()["extra"]["resumed_from"]
        .as_f64()
        .unwrap();
    assert_eq!(
        resumed as usize,
        done_first.len(),
        "nothing committed was redone: {detail}"
    );
    assert_eq!(detail["attempt"], 2, "{detail}");
}
