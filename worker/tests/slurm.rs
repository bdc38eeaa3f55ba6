//! Workers run by a real Slurm, across hosts made of network namespaces: the coordinator and
//! `slurmctld` in one namespace, one `slurmd` in each of two more, joined by a bridge that has no
//! address of its own (so every address used is inside a namespace this test made). Needs root, and
//! Slurm and munge from Debian's packages (`scripts/setup.sh` installs them).
mod cluster;
mod common;

use cluster::*;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The hosts: (name, address) of the controller and of the two compute nodes.
const HOSTS: [(&str, &str); 3] = [
    ("ctl", "10.78.0.1"),
    ("n1", "10.78.0.2"),
    ("n2", "10.78.0.3"),
];

/// Namespaces, bridge and daemons of one test, all removed on drop (a failing test too).
struct Hosts {
    tag: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Hosts {
    fn netns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn netns_path(&self, host: &str) -> String {
        format!("/run/netns/{}", self.netns(host))
    }

    /// A command run inside `host`'s network namespace.
    fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path(host)))
            .arg(program);
        c.env("SLURM_CONF", self.dir.join("slurm.conf"));
        c
    }

    /// A daemon in `host`'s namespace with `host` as its hostname (`unshare --uts`), kept until drop.
    fn daemon(&mut self, host: &str, line: &str) {
        let log =
            std::fs::File::create(self.dir.join(format!("{host}-{}.out", self.children.len())))
                .unwrap();
        let child = self
            .command(host, "unshare")
            .args([
                "--uts",
                "bash",
                "-c",
                &format!("hostname {host}; exec {line}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn up(dir: &Path) -> Hosts {
        let tag = format!("sw{}", std::process::id());
        let hosts = Hosts {
            tag: tag.clone(),
            dir: dir.to_path_buf(),
            children: vec![],
        };
        let bridge = format!("{tag}br");
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run("ip", &["link", "set", &bridge, "up"]);
        for (i, (host, addr)) in HOSTS.iter().enumerate() {
            let ns = hosts.netns(host);
            let veth = format!("{tag}v{i}");
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            run("ip", &["link", "set", &veth, "master", &bridge, "up"]);
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// munge (a private socket and key) and Slurm: `slurmctld` on ctl, `slurmd` on n1 and n2; returns
    /// once both nodes are idle.
    fn start_slurm(&mut self) {
        let d = self.dir.clone();
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key)
            .unwrap();
        std::fs::write(d.join("munge.key"), key).unwrap();
        std::fs::set_permissions(
            d.join("munge.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let p = |f: &str| d.join(f).display().to_string();
        run(
            "munged",
            &[
                "--force",
                &format!("--socket={}", p("munge.sock")),
                &format!("--key-file={}", p("munge.key")),
                &format!("--pid-file={}", p("munged.pid")),
                &format!("--seed-file={}", p("munge.seed")),
                &format!("--log-file={}", p("munged.log")),
            ],
        );
        std::fs::create_dir_all(d.join("state")).unwrap();
        std::fs::write(d.join("slurm.conf"), slurm_conf(&d)).unwrap();
        let conf = p("slurm.conf");
        self.daemon("ctl", &format!("slurmctld -D -f {conf}"));
        for node in ["n1", "n2"] {
            self.daemon(node, &format!("slurmd -D -N {node} -f {conf}"));
        }
        let mut stall = Stall::new(Duration::from_secs(60));
        loop {
            let out = self
                .command("ctl", "sinfo")
                .args(["-h", "-N", "-o", "%T"])
                .output()
                .unwrap();
            let states = String::from_utf8_lossy(&out.stdout).to_string();
            if states.lines().filter(|l| l.trim() == "idle").count() == 2 {
                return;
            }
            stall.check(
                &serde_json::Value::Null,
                &format!("Slurm nodes not idle: {states:?}"),
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("munged.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        // Whatever still runs in the namespaces (a job step whose daemon was killed: slurmstepd
        // outlives slurmd) holds them, and with them the bridge's veths: killed by namespace.
        for (host, _) in HOSTS {
            let pids = Command::new("ip")
                .args(["netns", "pids", &self.netns(host)])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        for (i, (host, _)) in HOSTS.iter().enumerate() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(host)])
                .status();
            // A namespace is freed only when nothing refers to it any more (its sockets closing can
            // take a while); deleting our end of its veth pair removes both ends now.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}v{i}", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}br", self.tag)])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn slurm_conf(d: &Path) -> String {
    let d = d.display();
    let nodes: String = HOSTS[1..]
        .iter()
        .map(|(n, a)| format!("NodeName={n} NodeAddr={a} CPUs=1 State=UNKNOWN\n"))
        .collect();
    format!(
        "ClusterName=sweeps\nSlurmctldHost=ctl({ctl})\nSlurmUser=root\nSlurmdUser=root\n\
         AuthType=auth/munge\nAuthInfo=socket={d}/munge.sock\nCredType=cred/munge\n\
         SlurmctldPort=6817\nSlurmdPort=6818\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool-%n\n\
         SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd-%n.pid\n\
         SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd-%n.log\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\nSchedulerType=sched/backfill\n\
         SelectType=select/cons_tres\nReturnToService=2\nMpiDefault=none\n{nodes}\
         PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
        ctl = HOSTS[0].1
    )
}

/// Runs `f` on a thread whose sockets live in `netns` (setns applies to the calling thread only).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns).unwrap();
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {netns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Why this machine cannot run these tests, if it cannot.
fn missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, Slurm's daemons)".into());
    }
    [
        "slurmctld",
        "slurmd",
        "sbatch",
        "munged",
        "nsenter",
        "unshare",
        "ip",
    ]
    .into_iter()
    .find(|p| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .map(|p| format!("needs {p} (scripts/setup.sh installs Slurm and munge)"))
}

#[test]
fn an_array_of_workers_under_slurm_drains_a_sweep_and_a_preempted_task_gives_its_job_back() {
    if let Some(why) = missing() {
        // CI runs as root with the set-up script's packages; a developer's machine may not.
        eprintln!("SKIPPED: {why}");
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = Hosts::up(dir.path());
    let mut cmd = hosts.command("ctl", server_bin());
    cmd.args([
        "serve",
        "--listen",
        &format!("{}:0", HOSTS[0].1),
        "--token",
        TOKEN,
        "--db",
    ])
    .arg(dir.path().join("sweeps.db"))
    .stderr(Stdio::null());
    let (child, url) = protocol::listening::start_coordinator(cmd).unwrap();
    // Dropped before the hosts (declared after them): the coordinator stops, then the namespaces go.
    let coordinator = Coordinator {
        child,
        url: url.clone(),
    };
    hosts.start_slurm();
    let ctl = hosts.netns_path("ctl");
    let train = json!({"dataset": "synthetic", "epochs": 1, "model_widths": [8, 16, 32, 64], "model_depth": 1,
                       "model_heads": 2, "limit_train": 256, "limit_test": 128});
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "slurm", "train": train, "grid": {"seed": [1, 2, 3, 4]}}))
    });
    let array = sbatch_array(&hosts, dir.path(), &url, "0-1");

    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    assert_eq!(done["status"], SweepStatus::Finished.as_str(), "{done}");
    let jobs = done["jobs"].as_array().unwrap();
    assert!(
        jobs.iter()
            .all(|j| j["status"] == JobStatus::Completed.as_str()),
        "{done}"
    );
    // Every job ran under one of the array's tasks, named as `squeue` names them, on a node of its
    // own namespace.
    let names: std::collections::BTreeSet<&str> =
        jobs.iter().map(|j| j["worker"].as_str().unwrap()).collect();
    for name in &names {
        let ok = ["n1", "n2"].iter().any(|n| {
            [0, 1]
                .iter()
                .any(|t| *name == format!("{n}-slurm-{array}_{t}-0"))
        });
        assert!(
            ok,
            "worker {name:?} is not an array task of job {array}: {done}"
        );
    }
    // The tasks end by themselves once the sweep is drained (--exit-when-idle), freeing the nodes.
    wait_gone(&hosts, &array);

    // Preemption: `scancel` of a task in its job's second epoch gives the job back (released, not
    // failed), and a new allocation resumes it from its checkpoint, each epoch recorded once.
    let mut long = train.clone();
    long["epochs"] = json!(2);
    long["limit_train"] = json!(1024);
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "preempted", "train": long}))
    });
    let array = sbatch_array(&hosts, dir.path(), &url, "0-0");
    in_netns(&ctl, || coordinator.wait_first_epoch(sweep));
    let cancelled = hosts
        .command("ctl", "scancel")
        .arg(&array)
        .status()
        .unwrap();
    assert!(cancelled.success());
    let job = in_netns(&ctl, || {
        let mut stall = Stall::new(STALL);
        loop {
            let s = coordinator.get(&format!("/api/sweeps/{sweep}"));
            let id = s["jobs"][0]["id"].as_i64().unwrap();
            let d = coordinator.get(&format!("/api/jobs/{id}"));
            if d["attempts"][0]["outcome"].is_string() {
                return d;
            }
            stall.check(&s, "the preempted attempt did not end");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(job["attempts"][0]["outcome"], "released", "{job}");
    assert_eq!(job["status"], JobStatus::Pending.as_str(), "{job}");
    wait_gone(&hosts, &array);
    sbatch_array(&hosts, dir.path(), &url, "0-0");
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    let id = done["jobs"][0]["id"].as_i64().unwrap();
    let job = in_netns(&ctl, || coordinator.get(&format!("/api/jobs/{id}")));
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    let epochs: Vec<i64> = job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2], "every epoch once: {job}");
}

/// Submits the array recipe with these task ids; the array's job id.
fn sbatch_array(hosts: &Hosts, dir: &Path, url: &str, tasks: &str) -> String {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/worker-array.sbatch");
    let out = hosts
        .command("ctl", "sbatch")
        .args([&format!("--array={tasks}"), "--parsable"])
        .arg(format!("--output={}/array-%A_%a.out", dir.display()))
        .arg(&recipe)
        .env("SWEEP_SERVER", url)
        .env("SWEEP_TOKEN", TOKEN)
        .env("SWEEP_WORK_DIR", dir.join("runs"))
        .env("WORKER", worker_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Until Slurm no longer lists any task of the array.
fn wait_gone(hosts: &Hosts, array: &str) {
    let mut stall = Stall::new(Duration::from_secs(60));
    loop {
        let q = hosts
            .command("ctl", "squeue")
            .args(["-h", "-j", array])
            .output()
            .unwrap();
        let left = String::from_utf8_lossy(&q.stdout).to_string();
        if left.trim().is_empty() {
            return;
        }
        stall.check(
            &serde_json::Value::Null,
            &format!("array tasks still queued: {left}"),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
