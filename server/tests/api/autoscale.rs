//! `server autoscale slurm` as a process against the real coordinator, with stand-ins for Slurm's
//! commands on its PATH (the real Slurm runs it in `worker/tests/multinode.rs`): a dry run prints
//! what it would submit and submits nothing, an unreachable coordinator means no submission, and
//! a Slurm that refuses is asked again only after a growing wait, never every round.
use crate::helpers::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// A directory of stand-ins: `squeue` lists nothing, `sbatch` notes each call in `calls` and
/// refuses it as a full queue would.
fn fake_slurm(dir: &Path) {
    let calls = dir.join("calls");
    let scripts = [
        ("squeue", "#!/bin/sh\nexit 0\n".to_string()),
        (
            "sbatch",
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\necho 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2\nexit 1\n",
                calls.display()
            ),
        ),
    ];
    for (name, text) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
}

fn autoscaler(dir: &Path, server: &str, extra: &[&str]) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let token = dir.join("worker.token");
    std::fs::write(&token, WORKER_TOKEN).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(["autoscale", "slurm", "--server", server, "--token", TOKEN])
        .arg("--worker-token-file")
        .arg(&token)
        .arg("--template")
        .arg(root.join("deploy/slurm/worker-nodes.sbatch"))
        .args(extra)
        .env(
            "PATH",
            format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("RUST_LOG", "info");
    cmd
}

fn calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls")).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_its_plan_and_an_unreachable_coordinator_gets_nothing_submitted() {
    let app = spawn_app().await;
    app.submit("name = \"two\"\n[train]\ndataset = \"synthetic\"\n[grid]\nseed = [1, 2]\n")
        .await;
    let dir = tempfile::tempdir().unwrap();
    fake_slurm(dir.path());
    let out = autoscaler(dir.path(), &app.base, &["--dry-run", "--time", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one allocation per pending job: {stdout}");
    assert!(
        lines[0].starts_with("would submit: sbatch --parsable --job-name=sweep-auto-n1-r1-t-g- --nodes=1 --ntasks-per-node=1 --time=30 --cpus-per-task=1 ")
            && lines[0].contains("worker-nodes.sbatch"),
        "{stdout}"
    );
    assert_eq!(calls(dir.path()), 0, "a dry run submits nothing");

    let out = autoscaler(dir.path(), "http://127.0.0.1:1", &["--dry-run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.contains("did not answer") && stderr.contains("submitting nothing"),
        "{stderr}"
    );
    assert_eq!(calls(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slurm_that_refuses_is_asked_again_only_after_a_growing_wait() {
    let app = spawn_app().await;
    app.submit("name = \"one\"\n[train]\ndataset = \"synthetic\"\n")
        .await;
    let dir = tempfile::tempdir().unwrap();
    fake_slurm(dir.path());
    let log = dir.path().join("autoscale.log");
    let mut child = autoscaler(dir.path(), &app.base, &["--interval", "0.1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Until it has held back for several rounds (following its log, not a fixed time).
    let held = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("backing off")
            .count()
    };
    let started = std::time::Instant::now();
    while held() < 6 {
        assert!(
            started.elapsed().as_secs() < 60,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = text.matches("sbatch refused").count();
    assert!(
        text.contains("QOSMaxSubmitJobPerUserLimit"),
        "the refusal is in its log: {text}"
    );
    assert_eq!(calls(dir.path()), refused);
    assert!(
        (1..=4).contains(&refused) && held() >= 6,
        "{refused} submissions for {} rounds: {text}",
        refused + held()
    );
}
