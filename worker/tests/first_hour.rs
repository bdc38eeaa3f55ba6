//! A newcomer's first hour, from outside: a worker that cannot work stops (and spends no attempt)
//! instead of failing a sweep, a wrong token or address ends the worker with what to fix, and the
//! demo ends on a dashboard URL that answers. Real coordinator, real workers, real processes.
mod cluster;
mod common;

use cluster::*;
use protocol::JobStatus;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A sweep of the trainer on CIFAR-10 (what a worker without the data cannot run).
fn cifar_sweep(c: &Coordinator, jobs: usize) -> i64 {
    let seeds: Vec<i64> = (0..jobs as i64).collect();
    c.submit(json!({
        "name": "needs cifar",
        "train": {"epochs": 1, "model_widths": [8, 16, 32, 64], "model_depth": 1, "model_heads": 2,
                  "limit_train": 64, "limit_test": 32},
        "grid": {"seed": seeds},
        "run": {"max_attempts": 2}
    }))
}

/// Waits (following the process, not a fixed time) for `w` to exit; its status.
fn exit_of(w: &mut Worker, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = w.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "the worker did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_of(work: &Path) -> String {
    std::fs::read_to_string(work.with_extension("log")).unwrap_or_default()
}

/// The worker: its data directory holds no CIFAR-10 and the data cannot be fetched. The
/// job it takes goes back (no attempt spent), its log says why at WARN, and it stops claiming at
/// once (the next job would fail the same way) and exits saying what to fix.
#[test]
fn a_worker_without_its_data_spends_no_attempt_and_stops_claiming() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = cifar_sweep(&c, 4);
    let (data, work) = (dir.path().join("empty-data"), dir.path().join("w"));
    std::fs::create_dir_all(&data).unwrap();
    // Port 1 on loopback refuses at once: the download fails as an offline machine's does.
    let mut w = worker(
        &c.url,
        &work,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--data-url",
            "http://127.0.0.1:1/cifar-10-binary.tar.gz",
        ],
    );
    let status = exit_of(&mut w, Duration::from_secs(120));
    let log = log_of(&work);
    assert!(!status.success(), "the worker ends with an error: {log}");
    assert!(
        log.contains("stopped claiming")
            && log.contains("this machine cannot run the jobs it is given")
            && log.contains("no CIFAR-10 in")
            && log.contains("--data-dir"),
        "{log}"
    );
    assert!(
        log.contains("WARN") && log.contains("this worker could not run the job"),
        "{log}"
    );
    let s = c.get(&format!("/api/sweeps/{sweep}"));
    let jobs = s["jobs"].as_array().unwrap();
    for j in jobs {
        assert_eq!(j["status"], JobStatus::Pending.as_str(), "{j}");
        let left = j["max_attempts"].as_i64().unwrap() - j["attempt"].as_i64().unwrap();
        assert_eq!(left, 2, "no attempt spent: {j}");
    }
    let claims: i64 = jobs.iter().map(|j| j["attempt"].as_i64().unwrap()).sum();
    assert_eq!(claims, 1, "one claim, given back, then no more: {s}");
    let taken = jobs
        .iter()
        .find(|j| j["attempt"].as_i64() > Some(0))
        .unwrap();
    let d = c.get(&format!("/api/jobs/{}", taken["id"]));
    let why = d["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("this worker cannot run the job: no CIFAR-10 in") && !why.contains('\n'),
        "{d}"
    );
}

/// A trainer that fails before its first epoch on every job (here: a weights file that is not
/// there): after `--max-early-failures` in a row the worker stops claiming, before it has failed
/// the whole sweep.
#[test]
fn a_worker_whose_jobs_keep_failing_early_stops_after_a_few() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = c.submit(json!({
        "name": "broken",
        "train": {"dataset": "synthetic", "epochs": 1, "model_widths": [8, 16, 32, 64],
                  "model_depth": 1, "model_heads": 2, "limit_train": 64, "limit_test": 32,
                  "init_from": "missing/weights.safetensors"},
        "grid": {"seed": [0, 1, 2, 3, 4, 5]},
        "run": {"max_attempts": 1}
    }));
    let work = dir.path().join("w");
    let mut w = worker(&c.url, &work, &["--max-early-failures", "2"]);
    assert!(!exit_of(&mut w, Duration::from_secs(120)).success());
    let log = log_of(&work);
    assert!(
        log.contains("2 jobs in a row failed before their first epoch")
            && log.contains("missing/weights.safetensors"),
        "{log}"
    );
    let s = c.get(&format!("/api/sweeps/{sweep}"));
    let failed = JobStatus::Failed.as_str();
    let n = |st: &str| {
        s["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == st)
            .count()
    };
    assert_eq!((n(failed), n(JobStatus::Pending.as_str())), (2, 4), "{s}");
}

/// A `--data-dir` that does not exist, a work directory that cannot be written: refused before
/// the first claim, with what to fix; nothing claimed.
#[test]
fn a_worker_checks_itself_before_it_claims() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let sweep = cifar_sweep(&c, 1);
    let work = dir.path().join("w");
    let mut w = worker(&c.url, &work, &["--data-dir", "/nonexistent/cifar"]);
    assert!(!exit_of(&mut w, Duration::from_secs(30)).success());
    let log = log_of(&work);
    assert!(
        log.contains("--data-dir /nonexistent/cifar does not exist"),
        "{log}"
    );
    // Below a file: no directory can be made there (root included).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let log = dir.path().join("unwritable.log");
    let mut w = Worker(
        Command::new(worker_bin())
            .args(["run", "--server", &c.url, "--token", TOKEN, "--work-dir"])
            .arg(file.join("w"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(!exit_of(&mut w, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("is not writable"), "{log}");
    let s = c.get(&format!("/api/sweeps/{sweep}"));
    assert_eq!(s["jobs"][0]["attempt"], 0, "nothing claimed: {s}");
}

/// A wrong token, and a `--server` with the API's path: the worker exits at once with what to
/// fix instead of retrying for ever. A `--server` without a scheme is read as http://.
#[test]
fn a_worker_refused_for_good_exits_with_what_to_fix() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let run = |server: &str, token: &str, name: &str| {
        let work = dir.path().join(name);
        let mut w = Worker(
            Command::new(worker_bin())
                .args(["run", "--server", server, "--token", token, "--work-dir"])
                .arg(&work)
                .stderr(std::fs::File::create(work.with_extension("log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let status = exit_of(&mut w, Duration::from_secs(30));
        (status.success(), log_of(&work))
    };
    let bare = c.url.trim_start_matches("http://").to_string();
    let (ok, log) = run(&bare, "not-the-token", "wrong-token");
    assert!(!ok);
    assert!(
        log.contains("401")
            && log.contains("server worker add")
            && log.contains("<db>.worker-token"),
        "{log}"
    );
    let (ok, log) = run(&format!("{}/api", c.url), TOKEN, "wrong-path");
    assert!(!ok);
    assert!(
        log.contains("is not a coordinator's root") && log.contains("no /api"),
        "{log}"
    );
}

/// `make demo`'s script on a tiny synthetic sweep: its last line is the dashboard's URL, which
/// answers (the page, and the finished sweep behind it) until the demo is stopped.
#[test]
fn the_demo_ends_on_a_dashboard_url_that_answers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The sweep is synthetic: the files only have to be there for the demo's data check.
    for f in ["data_batch_1.bin", "test_batch.bin"] {
        std::fs::write(data.join(f), "").unwrap();
    }
    let sweep = dir.path().join("tiny.toml");
    std::fs::write(
        &sweep,
        "name = \"tiny demo\"\n[train]\ndataset = \"synthetic\"\nepochs = 1\nmodel_widths = [8, 16, 32, 64]\n\
         model_depth = 1\nmodel_heads = 2\nlimit_train = 64\nlimit_test = 32\nwarmup_epochs = 0\n\
         [grid]\nlr = [0.01, 0.001]\n",
    )
    .unwrap();
    let root = common::repo_root();
    let bin = server_bin().parent().unwrap().to_path_buf();
    let mut demo = Command::new("bash");
    demo.arg(root.join("scripts/demo.sh"))
        .env("BIN", &bin)
        .env("SWEEP", &sweep)
        .env("DEMO", dir.path().join("demo"))
        .env("DEMO_DATA", &data)
        .env("DEMO_STAY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut demo, 0);
    let mut child = demo.spawn().unwrap();
    let pgid = child.id() as i32;
    // Whatever happens below, the demo's coordinator and worker go with it.
    let _group = KillGroup(pgid);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the demo ended early: {seen:#?}"))
            .unwrap();
        seen.push(line.clone());
        if seen
            .iter()
            .rev()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo: done"))
        {
            break line;
        }
    };
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/#/sweeps/"),
        "{seen:#?}"
    );
    let base = url.split("/#/").next().unwrap();
    let page = ureq::get(&format!("{base}/"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("<html"), "{page}");
    let id = url.rsplit('/').next().unwrap();
    let s: serde_json::Value = ureq::get(&format!("{base}/api/sweeps/{id}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(s["status"], protocol::SweepStatus::Finished.as_str(), "{s}");
    assert!(
        seen.iter().any(|l| l.contains("tiny demo")),
        "the table and status came first: {seen:#?}"
    );
    drop(_group);
    let _ = child.wait();
}

/// Kills a process group when dropped (the demo's script, its coordinator and its worker).
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-self.0, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}
