//! Workers on several hosts, the hosts made of network namespaces: the coordinator (and Slurm's
//! `slurmctld`) in one namespace, a worker (or a `slurmd`) in each of two more, joined by a bridge
//! that has no address of its own (so every address used is inside a namespace these tests made).
//! Jobs that span both hosts (a gang of two workers), and workers run by a real Slurm. Needs root;
//! the Slurm tests also need Slurm and munge from Debian's packages (`scripts/setup.sh` installs
//! them).
mod cluster;
mod common;

use cluster::*;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
// The coordinator's clock is this machine's.
use worker::service::allocation::{now_ms, parse_end_flag, EndFlag};

/// What the Slurm tests run besides the namespaces' tools.
const SLURM: &[&str] = &["slurmctld", "slurmd", "sbatch", "munged"];

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

    /// The coordinator on `ctl`, listening on its address.
    fn coordinator(&self, extra: &[&str]) -> Coordinator {
        let mut cmd = self.command("ctl", server_bin());
        cmd.args([
            "serve",
            "--listen",
            &format!("{}:0", HOSTS[0].1),
            "--token",
            TOKEN,
            "--db",
        ])
        .arg(self.dir.join("sweeps.db"))
        .args(extra)
        .stderr(Stdio::null());
        let (child, url) = protocol::listening::start_coordinator(cmd).unwrap();
        Coordinator { child, url }
    }

    /// `worker run` on `host`, named after it, its log in the test's directory.
    fn worker(&self, host: &str, url: &str, extra: &[&str]) -> Worker {
        self.worker_on(None, host, url, extra)
    }

    /// [`Self::worker`], with its process held to one core when `core` says which: as a machine
    /// of its own core would be (its trainer then runs one thread, not as many as this machine has).
    fn worker_on(&self, core: Option<usize>, host: &str, url: &str, extra: &[&str]) -> Worker {
        let work = self.dir.join(format!("{host}-runs"));
        let log = (0..)
            .map(|i| self.dir.join(format!("{host}-worker-{i}.log")))
            .find(|p| !p.exists())
            .unwrap();
        let mut cmd = match core {
            Some(c) => {
                let mut cmd = self.command(host, "taskset");
                cmd.args(["-c", &c.to_string()]).arg(worker_bin());
                cmd
            }
            None => self.command(host, worker_bin()),
        };
        let child = cmd
            .args(["run", "--server", url, "--token", TOKEN, "--name", host])
            .args([
                "--heartbeat-seconds",
                "1",
                "--idle-seconds",
                "0.2",
                "--work-dir",
            ])
            .arg(work)
            .args(extra)
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn up(dir: &Path) -> Hosts {
        // One set of hosts at a time (tests hold `serial()`), each with names of its own.
        static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("sw{}{n}", std::process::id() % 1_000_000);
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

/// One test's hosts, with the coordinator on `ctl`. Fields drop in this order: the coordinator
/// stops, then the namespaces and daemons go, then the directory, then the next test may start.
struct Site {
    coordinator: Coordinator,
    hosts: Hosts,
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Site {
    /// None (after printing SKIPPED and why) where this machine cannot run a test that needs
    /// `programs`; `serve` adds options to the coordinator's.
    fn up(programs: &[&str], serve: &[&str]) -> Option<Site> {
        if let Some(why) = missing(programs) {
            // CI runs as root with the set-up script's packages; a developer's machine may not.
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let hosts = Hosts::up(dir.path());
        let coordinator = hosts.coordinator(serve);
        Some(Site {
            coordinator,
            hosts,
            dir,
            _serial: serial,
        })
    }
}

/// Why this machine cannot run the tests that need `programs`, if it cannot.
fn missing(programs: &[&str]) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, Slurm's daemons)".into());
    }
    ["nsenter", "unshare", "ip"]
        .iter()
        .chain(programs)
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
    let Some(mut site) = Site::up(SLURM, &[]) else {
        return;
    };
    site.hosts.start_slurm();
    let (hosts, coordinator, dir) = (&site.hosts, &site.coordinator, &site.dir);
    let url = coordinator.url.clone();
    let ctl = hosts.netns_path("ctl");
    let train = json!({"dataset": "synthetic", "epochs": 1, "model_widths": [8, 16, 32, 64], "model_depth": 1,
                       "model_heads": 2, "limit_train": 256, "limit_test": 128});
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "slurm", "train": train, "grid": {"seed": [1, 2, 3, 4]}}))
    });
    // The recipe as documented: one enrollment credential for the array, each task minting its own.
    let enroll = json!({"name": "array", "enrollment": {"uses": 8, "expires_in_seconds": 3600}});
    let issued = in_netns(&ctl, || coordinator.post("/api/workers", enroll));
    let enroll_file = dir.path().join("array.enroll");
    std::fs::write(&enroll_file, issued["token"].as_str().unwrap()).unwrap();
    let array = sbatch_array(hosts, dir.path(), &url, "0-1");

    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    assert_eq!(done["status"], SweepStatus::Finished.as_str(), "{done}");
    let jobs = done["jobs"].as_array().unwrap();
    assert!(
        jobs.iter()
            .all(|j| j["status"] == JobStatus::Completed.as_str()),
        "{done}"
    );
    // Every job ran under one of the array's tasks, named as `squeue` names them (after the
    // enrollment credential that minted its own), on a node of its own namespace.
    let names: std::collections::BTreeSet<&str> =
        jobs.iter().map(|j| j["worker"].as_str().unwrap()).collect();
    for name in &names {
        let ok = ["n1", "n2"].iter().any(|n| {
            [0, 1]
                .iter()
                .any(|t| *name == format!("array-{n}-slurm-{array}_{t}-0"))
        });
        assert!(
            ok,
            "worker {name:?} is not an array task of job {array}: {done}"
        );
    }
    // The tasks end by themselves once the sweep is drained (--exit-when-idle), freeing the nodes.
    wait_gone(hosts, &array);

    // Preemption: `scancel` of a task in its job's second epoch gives the job back (released, not
    // failed), and a new allocation resumes it from its checkpoint, each epoch recorded once.
    let mut long = train.clone();
    long["epochs"] = json!(2);
    long["limit_train"] = json!(1024);
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "preempted", "train": long}))
    });
    let array = sbatch_array(hosts, dir.path(), &url, "0-0");
    in_netns(&ctl, || coordinator.wait_first_epoch(sweep));
    let job = scancel_gives_back(hosts, coordinator, &array, sweep);
    assert_eq!(job["status"], JobStatus::Pending.as_str(), "{job}");
    sbatch_array(hosts, dir.path(), &url, "0-0");
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    let id = done["jobs"][0]["id"].as_i64().unwrap();
    let job = in_netns(&ctl, || coordinator.get(&format!("/api/jobs/{id}")));
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    let epochs = epochs(&job);
    assert_eq!(epochs, vec![1, 2], "every epoch once: {job}");
}

#[test]
fn an_allocation_of_two_nodes_runs_a_two_node_job_and_its_cancel_gives_the_job_back() {
    let Some(mut site) = Site::up(SLURM, &[]) else {
        return;
    };
    let sbatched = std::time::Instant::now();
    site.hosts.start_slurm();
    let (hosts, coordinator, dir) = (&site.hosts, &site.coordinator, &site.dir);
    let url = coordinator.url.clone();
    let ctl = hosts.netns_path("ctl");
    let output = format!("--output={}/nodes-%j.out", dir.path().display());
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "nodes", "train": tiny(1, 2, 1)}))
    });
    let submitted = now_ms();
    let alloc = sbatch(hosts, &url, "worker-nodes.sbatch", &[&output]);
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    eprintln!(
        "slurm up and the 2-node job done in {:?}",
        sbatched.elapsed()
    );
    let job = job_of(hosts, coordinator, &done);
    let formed = job["attempts"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["joined_at"].as_i64().unwrap())
        .max()
        .unwrap();
    eprintln!("sbatch to a formed gang: {} ms", formed - submitted);
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    assert_eq!(job["summary"]["world_size"], 2, "{job}");
    // The members are the allocation's two tasks, one on each node, named as Slurm's tasks.
    let mut members: Vec<String> = job["attempts"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["worker"].as_str().unwrap().to_string())
        .collect();
    members.sort();
    assert_eq!(
        members,
        [format!("n1-slurm-{alloc}-0"), format!("n2-slurm-{alloc}-1")],
        "{job}"
    );
    wait_gone(hosts, &alloc);

    // Cancelled mid-job: the gang gives the job back (released, not failed), and a new
    // allocation resumes it, each epoch once.
    let mut long = tiny(3, 2, 1);
    long["limit_train"] = json!(1024);
    long["fp64"] = json!(false);
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "scancelled", "train": long}))
    });
    let alloc = sbatch(hosts, &url, "worker-nodes.sbatch", &[&output]);
    in_netns(&ctl, || coordinator.wait_first_epoch(sweep));
    scancel_gives_back(hosts, coordinator, &alloc, sweep);
    sbatch(hosts, &url, "worker-nodes.sbatch", &[&output]);
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    let job = job_of(hosts, coordinator, &done);
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    let epochs = epochs(&job);
    assert_eq!(epochs, vec![1, 2, 3], "every epoch once: {job}");
}

/// The tiny network on synthetic data in fp64, as one job of `nnodes` workers with `nproc` ranks
/// each.
fn tiny(epochs: i64, nnodes: i64, nproc: i64) -> serde_json::Value {
    json!({"dataset": "synthetic", "epochs": epochs, "model_widths": [8, 16, 32, 64], "model_depth": 1,
           "model_heads": 2, "limit_train": 512, "limit_test": 128, "batch_size": 32, "fp64": true,
           "dist_backend": "gloo", "nnodes": nnodes, "nproc_per_node": nproc})
}

/// A job's document, read from the controller's namespace.
fn job_of(hosts: &Hosts, coordinator: &Coordinator, done: &serde_json::Value) -> serde_json::Value {
    let id = done["jobs"][0]["id"].as_i64().unwrap();
    in_netns(&hosts.netns_path("ctl"), || {
        coordinator.get(&format!("/api/jobs/{id}"))
    })
}

/// The epochs a job's document records, in order.
fn epochs(job: &serde_json::Value) -> Vec<i64> {
    job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["epoch"].as_i64().unwrap())
        .collect()
}

/// The document of the sweep's first job once its first attempt has ended (following progress).
fn first_attempt_ended(hosts: &Hosts, coordinator: &Coordinator, sweep: i64) -> serde_json::Value {
    in_netns(&hosts.netns_path("ctl"), || {
        let mut stall = Stall::new(STALL);
        loop {
            let s = coordinator.get(&format!("/api/sweeps/{sweep}"));
            let id = s["jobs"][0]["id"].as_i64().unwrap();
            let d = coordinator.get(&format!("/api/jobs/{id}"));
            if d["attempts"][0]["outcome"].is_string() {
                return d;
            }
            stall.check(&s, "the first attempt did not end");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// `scancel` of Slurm job `slurm_job` (an array or an allocation) running the sweep's first job:
/// that attempt ends released (given back, not failed or expired), and Slurm lists the job no
/// more. The job's document then.
fn scancel_gives_back(
    hosts: &Hosts,
    coordinator: &Coordinator,
    slurm_job: &str,
    sweep: i64,
) -> serde_json::Value {
    let cancelled = hosts
        .command("ctl", "scancel")
        .arg(slurm_job)
        .status()
        .unwrap();
    assert!(cancelled.success());
    let job = first_attempt_ended(hosts, coordinator, sweep);
    assert_eq!(job["attempts"][0]["outcome"], "released", "{job}");
    wait_gone(hosts, slurm_job);
    job
}

/// Each epoch's (train loss, test loss, accuracy).
fn curve(job: &serde_json::Value) -> Vec<(f64, f64, f64)> {
    job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let x = |k: &str| m[k].as_f64().unwrap();
            (x("train_loss"), x("test_loss"), x("accuracy"))
        })
        .collect()
}

#[test]
fn a_two_node_job_runs_as_one_gang_across_hosts_equal_to_two_ranks_on_one_worker() {
    let Some(site) = Site::up(&[], &[]) else {
        return;
    };
    let (hosts, coordinator) = (&site.hosts, &site.coordinator);
    let ctl = hosts.netns_path("ctl");
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "gang", "train": tiny(2, 2, 1)}))
    });
    // Each worker advertises its own host's address: the one on its route to the coordinator. Each
    // has a core of its own where the machine has two, as two machines would.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<Worker> = ["n1", "n2"]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let core = (cores >= 2).then_some(i);
            hosts.worker_on(core, h, &coordinator.url, &["--exit-when-idle"])
        })
        .collect();
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    let job = job_of(hosts, coordinator, &done);
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    assert_eq!(job["summary"]["world_size"], 2, "{job}");
    assert_eq!(
        job["summary"]["rank_param_max_diff"], 0.0,
        "identical replicas: {job}"
    );
    let members: Vec<(i64, &str)> = job["attempts"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node_rank"].as_i64().unwrap(),
                m["worker"].as_str().unwrap(),
            )
        })
        .collect();
    let mut hosts_of: Vec<&str> = members.iter().map(|m| m.1).collect();
    hosts_of.sort();
    assert_eq!(hosts_of, ["n1", "n2"], "one member on each host: {job}");
    assert_eq!(
        job["attempts"].as_array().unwrap().len(),
        1,
        "one attempt: {job}"
    );
    drop(workers);

    // The same job as 2 ranks on one worker: the same numbers, to fp64's rounding.
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "one", "train": tiny(2, 1, 2)}))
    });
    let _one = hosts.worker(
        "n1",
        &coordinator.url,
        &["--exit-when-idle", "--cpu-ranks", "2"],
    );
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    let alone = job_of(hosts, coordinator, &done);
    assert_eq!(alone["status"], JobStatus::Completed.as_str(), "{alone}");
    assert_eq!(alone["summary"]["world_size"], 2, "{alone}");
    let joined: Vec<i64> = job["attempts"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["joined_at"].as_i64().unwrap())
        .collect();
    eprintln!(
        "the gang formed {} ms after node 0 claimed",
        joined[1] - joined[0]
    );
    let wall = |j: &serde_json::Value| {
        j["attempts"][0]["ended_at"].as_i64().unwrap()
            - j["attempts"][0]["started_at"].as_i64().unwrap()
    };
    eprintln!(
        "wall time: 2 nodes x 1 rank {} ms, 1 worker x 2 ranks {} ms",
        wall(&job),
        wall(&alone)
    );
    let (gang, one) = (curve(&job), curve(&alone));
    assert_eq!(gang.len(), 2);
    for (g, o) in gang.iter().zip(&one) {
        for (a, b) in [(g.0, o.0), (g.1, o.1), (g.2, o.2)] {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{gang:?} vs {one:?}"
            );
        }
    }
}

#[test]
fn a_killed_member_ends_the_attempt_for_the_gang_and_the_retry_resumes() {
    let lease_seconds = 10;
    let Some(site) = Site::up(&[], &["--lease-seconds", &lease_seconds.to_string()]) else {
        return;
    };
    let (hosts, coordinator) = (&site.hosts, &site.coordinator);
    let ctl = hosts.netns_path("ctl");
    let mut train = tiny(4, 2, 1);
    train["limit_train"] = json!(1024);
    train["fp64"] = json!(false);
    let sweep = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "killed", "train": train}))
    });
    let mut n1 = hosts.worker("n1", &coordinator.url, &[]);
    let n2 = hosts.worker("n2", &coordinator.url, &[]);
    // Once epoch 2 is recorded, epoch 1's checkpoint (sent before it) is the coordinator's.
    in_netns(&ctl, || {
        let mut stall = Stall::new(STALL);
        loop {
            let s = coordinator.get(&format!("/api/sweeps/{sweep}"));
            if s["jobs"][0]["epoch"].as_i64().unwrap_or(0) >= 2 {
                return;
            }
            stall.check(&s, "epoch 2 not recorded");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // SIGKILL the member on n2 (whichever node it is): nothing of it says goodbye.
    drop(n2);
    let killed = std::time::Instant::now();
    let ended = first_attempt_ended(hosts, coordinator, sweep);
    let took = killed.elapsed();
    eprintln!(
        "attempt ended {took:?} after the kill: {}",
        ended["attempts"][0]["outcome"]
    );
    assert!(
        took < Duration::from_secs(lease_seconds + 5),
        "the attempt ended {took:?} after the kill: {ended}"
    );
    // The other member stops its ranks and is free again: with a new worker on n2 the retry forms
    // and resumes from the last checkpoint.
    let _n2 = hosts.worker("n2", &coordinator.url, &[]);
    let done = in_netns(&ctl, || coordinator.wait_sweep(sweep, STALL));
    eprintln!("done {:?} after the kill", killed.elapsed());
    let job = job_of(hosts, coordinator, &done);
    assert_eq!(job["status"], JobStatus::Completed.as_str(), "{job}");
    let epochs = epochs(&job);
    assert_eq!(epochs, vec![1, 2, 3, 4], "every epoch once: {job}");
    let attempts = job["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{job}");
    let last = attempts.last().unwrap();
    assert_eq!(last["members"].as_array().unwrap().len(), 2, "{job}");
    // The retry resumed from a checkpoint: at least epoch 1's (sent before epoch 2 was recorded);
    // epoch 2's may or may not have reached the coordinator before the kill, so the retry's first
    // epoch is 2 or 3, never 1.
    let first_of_retry = job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["attempt"] == last["attempt"])
        .map(|m| m["epoch"].as_i64().unwrap())
        .min();
    assert!(first_of_retry.is_some_and(|e| e >= 2), "{job}");
    n1.kill().unwrap();
}

/// Submits the array recipe with these task ids, its tasks enrolling with the credential in
/// `dir/array.enroll`; the array's job id.
fn sbatch_array(hosts: &Hosts, dir: &Path, url: &str, tasks: &str) -> String {
    let output = format!("--output={}/array-%A_%a.out", dir.display());
    let enroll = dir.join("array.enroll");
    sbatch_with(
        hosts,
        url,
        "worker-array.sbatch",
        &[&format!("--array={tasks}"), &output],
        &[("SWEEP_ENROLL_TOKEN_FILE", enroll.to_str().unwrap())],
    )
}

/// Submits a recipe of `deploy/slurm/` with these options and the shared token; its job id.
fn sbatch(hosts: &Hosts, url: &str, recipe: &str, options: &[&str]) -> String {
    sbatch_with(hosts, url, recipe, options, &[("SWEEP_TOKEN", TOKEN)])
}

/// Submits a recipe with these options and variables (among them the one that says how its
/// workers authenticate); its job id.
fn sbatch_with(
    hosts: &Hosts,
    url: &str,
    recipe: &str,
    options: &[&str],
    env: &[(&str, &str)],
) -> String {
    let dir = &hosts.dir;
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/slurm")
        .join(recipe);
    let out = hosts
        .command("ctl", "sbatch")
        .arg("--parsable")
        .args(options)
        .arg(&recipe)
        .env("SWEEP_SERVER", url)
        .env_remove("SWEEP_TOKEN")
        .envs(env.iter().copied())
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

/// Whether Slurm still lists the job.
fn in_squeue(hosts: &Hosts, id: &str) -> bool {
    let q = hosts
        .command("ctl", "squeue")
        .args(["-h", "-j", id])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&q.stdout).trim().is_empty()
}

/// Until Slurm no longer lists the job (or any task of the array).
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

/// The fixtures' command job (`job.py`): `epochs` epochs of `seconds` each, resuming from its
/// checkpoint directory and leaving through its stop file after the epoch it is in.
fn command_sweep(name: &str, epochs: u32, seconds: u32) -> serde_json::Value {
    json!({"name": name, "train": {"epochs": epochs},
           "command": {"argv": ["python3", "job.py", "--epochs", "{epochs}", "--sleep", seconds.to_string()]}})
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Slurm job `id`'s end as Slurm reports it (asked in UTC, the zone this test parses), once the
/// job runs: Unix ms.
fn slurm_end(hosts: &Hosts, id: &str) -> i64 {
    let mut stall = Stall::new(Duration::from_secs(60));
    loop {
        let out = hosts
            .command("ctl", "squeue")
            .args(["-h", "-j", id, "-o", "%T|%e"])
            .env("TZ", "UTC")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Some(("RUNNING", end)) = text.split_once('|') {
            // Slurm's own form, read as RFC 3339 in UTC by the worker's parser.
            match parse_end_flag(&format!("{end}Z")) {
                Ok(EndFlag::At(ms)) => return ms,
                other => panic!("squeue's end {end:?}: {other:?}"),
            }
        }
        stall.check(
            &serde_json::Value::Null,
            &format!("job {id} not running: {text:?}"),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a time-limited allocation did with a job longer than itself.
struct Limited {
    /// The job's document once done.
    job: serde_json::Value,
    /// The first allocation's end, as Slurm reported it (Unix ms).
    slurm_end: i64,
    /// When the first attempt ended, and when its last epoch was seen committed.
    ended_at: i64,
    last_commit: i64,
    /// The first allocation's worker log.
    log: String,
}

/// A command job of `epochs` epochs of `seconds` each under allocations of `--time=2` (minutes),
/// in a zone that is not UTC (squeue prints local time without one): the first allocation's worker
/// learns its end from Slurm (`aware`, with a grace of an epoch), or ignores it (`--end-time none`:
/// the time limit's SIGTERM stops it, with a grace inside Slurm's KillWait), and a second
/// allocation finishes the job.
fn time_limited(site: &Site, name: &str, aware: bool, (epochs, seconds): (u32, u32)) -> Limited {
    let (hosts, coordinator, dir) = (&site.hosts, &site.coordinator, &site.dir);
    let ctl = hosts.netns_path("ctl");
    let sweep = in_netns(&ctl, || {
        coordinator.submit(command_sweep(name, epochs, seconds))
    });
    let mut worker_args = format!(
        "--allow-commands --command-root {} --end-margin-seconds 5 --stop-grace-seconds {}",
        fixtures().display(),
        if aware { seconds + 2 } else { 8 }
    );
    if !aware {
        worker_args.push_str(" --end-time none");
    }
    let output = format!("--output={}/{name}-%j.out", dir.path().display());
    let env = [
        ("SWEEP_TOKEN", TOKEN),
        ("WORKER_ARGS", &worker_args),
        ("TZ", "XYZ-8"),
    ];
    let options = ["--nodes=1", "--time=2", output.as_str()];
    let alloc = sbatch_with(
        hosts,
        &coordinator.url,
        "worker-nodes.sbatch",
        &options,
        &env,
    );
    let end = slurm_end(hosts, &alloc);
    // Follow the first attempt, noting when each epoch is first seen committed.
    let (mut seen, mut last_commit) = (0, 0);
    let first = in_netns(&ctl, || loop {
        let s = coordinator.get(&format!("/api/sweeps/{sweep}"));
        let id = s["jobs"][0]["id"].as_i64().unwrap();
        let d = coordinator.get(&format!("/api/jobs/{id}"));
        if d["epoch"].as_i64().unwrap_or(0) > seen {
            (seen, last_commit) = (d["epoch"].as_i64().unwrap(), now_ms());
        }
        if d["attempts"][0]["outcome"].is_string() {
            return d;
        }
        assert!(
            now_ms() < end + 120_000,
            "the first attempt never ended: {d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    });
    wait_gone(hosts, &alloc);
    let log =
        std::fs::read_to_string(dir.path().join(format!("{name}-{alloc}.out"))).unwrap_or_default();
    // Allocations one after another until the job is done (each ends by itself: its worker gives
    // the job back before the end, or has nothing left), so no later run's job starts on one.
    let sweep_doc = || in_netns(&ctl, || coordinator.get(&format!("/api/sweeps/{sweep}")));
    let mut done = sweep_doc();
    for _ in 0..4 {
        if done["status"] == SweepStatus::Finished.as_str() {
            break;
        }
        let next = sbatch_with(
            hosts,
            &coordinator.url,
            "worker-nodes.sbatch",
            &options,
            &env,
        );
        // Until the allocation is gone, following the job's progress (it runs for minutes).
        let mut stall = Stall::new(STALL);
        while in_squeue(hosts, &next) {
            done = sweep_doc();
            stall.check(
                &done,
                &format!("allocation {next} neither ran the job nor ended"),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        done = sweep_doc();
    }
    assert_eq!(done["status"], SweepStatus::Finished.as_str(), "{done}");
    Limited {
        job: job_of(hosts, coordinator, &done),
        slurm_end: end,
        ended_at: first["attempts"][0]["ended_at"].as_i64().unwrap(),
        last_commit,
        log,
    }
}

/// Test 2 of #39: an allocation with `--time=2` whose worker learns its end from Slurm (22.05 sets
/// no variable: squeue, in local time without a zone) gives its job back before that end, with
/// its epochs committed, and the next allocation resumes it, each epoch once. With
/// SWEEP_SLURM_BENCH=1 it also runs the same job without end-time awareness and prints the work
/// each way lost to the time limit (docs/benchmarks.md).
#[test]
fn a_time_limited_allocation_gives_its_job_back_before_the_end_slurm_reports() {
    let Some(mut site) = Site::up(SLURM, &[]) else {
        return;
    };
    site.hosts.start_slurm();
    let r = time_limited(&site, "aware", true, (6, 20));
    assert!(
        r.log.contains("squeue (Slurm job"),
        "the end came from Slurm: {}",
        r.log
    );
    assert_eq!(r.job["status"], JobStatus::Completed.as_str(), "{}", r.job);
    assert_eq!(r.job["attempts"][0]["outcome"], "released", "{}", r.job);
    assert!(
        r.ended_at < r.slurm_end,
        "given back {} ms after the end Slurm reported: {}",
        r.ended_at - r.slurm_end,
        r.log
    );
    assert_eq!(
        epochs(&r.job),
        (1..=6).collect::<Vec<_>>(),
        "each epoch once"
    );
    report("end-time aware, 6 epochs of 20 s", &r);
    if std::env::var_os("SWEEP_SLURM_BENCH").is_some() {
        // Epochs longer than the grace Slurm's KillWait allows a worker that learns of the limit
        // from its SIGTERM.
        for (name, aware) in [("aware-4x50", true), ("unaware-4x50", false)] {
            let run = time_limited(&site, name, aware, (4, 50));
            assert_eq!(epochs(&run.job), (1..=4).collect::<Vec<_>>());
            report(name, &run);
        }
    }
}

/// What a time-limited run printed for docs/benchmarks.md.
fn report(what: &str, r: &Limited) {
    eprintln!(
        "{what}: the first attempt ended {:.1} s before Slurm's end, {:.1} s after its last committed epoch (compute after it is lost); {} attempts",
        (r.slurm_end - r.ended_at) as f64 / 1000.0,
        (r.ended_at - r.last_commit) as f64 / 1000.0,
        r.job["attempts"].as_array().map_or(0, Vec::len)
    );
}

/// Test 3 of #39: `server autoscale slurm` on an empty cluster of two nodes drains a sweep of
/// single-node jobs and one 2-node job with only allocations it submitted, never holding more
/// than `--max-workers` nodes, and once the work is done nothing of its own is left in squeue.
#[test]
fn the_autoscaler_drains_a_sweep_with_only_its_own_allocations_and_leaves_nothing_behind() {
    let Some(mut site) = Site::up(SLURM, &[]) else {
        return;
    };
    site.hosts.start_slurm();
    let (hosts, coordinator, dir) = (&site.hosts, &site.coordinator, &site.dir);
    let ctl = hosts.netns_path("ctl");
    let submitted = now_ms();
    let singles = in_netns(&ctl, || {
        coordinator
            .submit(json!({"name": "singles", "train": tiny(1, 1, 1), "grid": {"seed": [1, 2, 3]}}))
    });
    let gang = in_netns(&ctl, || {
        coordinator.submit(json!({"name": "gang", "train": tiny(1, 2, 1)}))
    });
    let log_path = dir.path().join("autoscale.log");
    let _autoscaler = autoscaler(hosts, dir.path(), &coordinator.url, &log_path);

    // Follow both sweeps, checking the autoscaler's allocations in squeue as they go.
    let mut seen = std::collections::BTreeSet::new();
    let mut stall = Stall::new(STALL);
    let mut first_claim = None;
    loop {
        let ours = squeue_ours(hosts);
        let nodes: usize = ours.iter().map(|(_, n)| n).sum();
        assert!(nodes <= 2, "more than --max-workers nodes: {ours:?}");
        seen.extend(ours.into_iter().map(|(id, _)| id));
        let (a, b) = in_netns(&ctl, || {
            (
                coordinator.get(&format!("/api/sweeps/{singles}")),
                coordinator.get(&format!("/api/sweeps/{gang}")),
            )
        });
        if first_claim.is_none() {
            first_claim = [&a, &b]
                .iter()
                .flat_map(|s| s["jobs"].as_array().unwrap().iter())
                .filter_map(|j| j["started_at"].as_i64())
                .min();
        }
        let finished = |s: &serde_json::Value| s["status"] == SweepStatus::Finished.as_str();
        if finished(&a) && finished(&b) {
            break;
        }
        stall.check(&json!([a, b]), "the autoscaled cluster stopped draining");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Every job completed, each on a worker of an allocation the autoscaler submitted.
    for sweep in [singles, gang] {
        let s = in_netns(&ctl, || coordinator.get(&format!("/api/sweeps/{sweep}")));
        for j in s["jobs"].as_array().unwrap() {
            assert_eq!(j["status"], JobStatus::Completed.as_str(), "{s}");
            let worker = j["worker"].as_str().unwrap();
            let alloc = worker
                .split("-slurm-")
                .nth(1)
                .and_then(|r| r.split('-').next())
                .unwrap();
            assert!(
                seen.contains(alloc),
                "{worker} is not on an allocation of the autoscaler's ({seen:?})"
            );
            assert!(
                log().contains(&format!("job={alloc}")),
                "the autoscaler's log names {alloc}: {}",
                log()
            );
        }
    }
    let gang_job = in_netns(&ctl, || coordinator.get(&format!("/api/sweeps/{gang}")));
    assert_eq!(gang_job["jobs"][0]["status"], JobStatus::Completed.as_str());
    // Its workers exit once nothing they can run is pending; nothing of its own stays queued.
    let mut stall = Stall::new(Duration::from_secs(60));
    while !squeue_ours(hosts).is_empty() {
        stall.check(
            &serde_json::Value::Null,
            &format!("allocations left: {:?}\n{}", squeue_ours(hosts), log()),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "autoscaler: submit to first claim {} ms; {} allocations for 4 jobs",
        first_claim.unwrap() - submitted,
        seen.len()
    );
}

/// `server autoscale slurm` on `ctl` with at most 2 nodes and 2 queued allocations, its workers
/// sharing the test's token and leaving after 3 s with nothing they can run; its log at `log`.
fn autoscaler(hosts: &Hosts, dir: &Path, url: &str, log: &Path) -> Worker {
    let token_file = dir.join("worker.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let template =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/worker-nodes.sbatch");
    let mut cmd = hosts.command("ctl", server_bin());
    cmd.current_dir(dir)
        .args(["autoscale", "slurm", "--server", url, "--token", TOKEN])
        .arg("--worker-token-file")
        .arg(&token_file)
        .arg("--template")
        .arg(&template)
        .args(["--max-workers", "2", "--max-pending-allocations", "2"])
        .args([
            "--interval",
            "1",
            "--nothing-fits-seconds",
            "3",
            "--startup-seconds",
            "20",
        ])
        .env("WORKER", worker_bin())
        .env("SWEEP_WORK_DIR", dir.join("runs"))
        .stderr(std::fs::File::create(log).unwrap());
    Worker(cmd.spawn().unwrap())
}

/// The autoscaler's allocations in squeue (its default job-name prefix): (job id, nodes).
fn squeue_ours(hosts: &Hosts) -> Vec<(String, usize)> {
    let out = hosts
        .command("ctl", "squeue")
        .args(["-h", "-o", "%i|%j|%D"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            match f.as_slice() {
                [id, name, nodes] if name.starts_with("sweep-auto-") => {
                    Some((id.to_string(), nodes.parse().unwrap_or(1)))
                }
                _ => None,
            }
        })
        .collect()
}
