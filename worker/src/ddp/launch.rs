//! torchrun's environment contract, and `worker train --nproc-per-node N`: the launcher that starts
//! N ranks of this same binary, prefixes their output, forwards signals and stops them all when
//! one fails.
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set by the launcher in its children, so a child with `--nproc-per-node N` runs as a rank
/// instead of launching again.
pub const CHILD_MARKER: &str = "SEED_DDP_CHILD";

/// What torchrun (and our launcher) tell each rank through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// TORCHELASTIC_USE_AGENT_STORE: torchrun's agent already serves the TCPStore on master_port.
    pub agent_store: bool,
}

impl RankEnv {
    /// The rank's place from the environment; None when WORLD_SIZE is not set (a plain run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |k: &str, default: Option<usize>| -> Result<usize> {
            match get(k) {
                Some(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{k}={v:?} is not a non-negative integer")),
                None => default.with_context(|| format!("WORLD_SIZE is set but {k} is not")),
            }
        };
        let world: usize = world
            .trim()
            .parse()
            .with_context(|| format!("WORLD_SIZE={world:?} is not a positive integer"))?;
        let rank = num("RANK", None)?;
        let local_rank = num("LOCAL_RANK", Some(rank))?;
        let local_world = num("LOCAL_WORLD_SIZE", Some(world))?;
        if world == 0 || rank >= world {
            bail!("RANK={rank} is not in WORLD_SIZE={world}");
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = num("MASTER_PORT", Some(29500))?;
        let master_port = u16::try_from(master_port)
            .with_context(|| format!("MASTER_PORT={master_port} is not a port"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
            .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
            .unwrap_or(false);
        Ok(Some(RankEnv {
            rank,
            world,
            local_rank,
            local_world,
            master_addr,
            master_port,
            agent_store,
        }))
    }
}

/// How the launcher places its ranks.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// 0: pick a free port (single node only).
    pub master_port: u16,
}

/// Intra-op threads for each of `local_world` ranks sharing this machine's cores (at least 1).
pub fn threads_per_rank(local_world: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local_world.max(1)).max(1)
}

/// The name of this machine's network interface on the route to `host`:`port` (None when it
/// cannot be told). Connecting a UDP socket sends nothing; it only picks the source address.
pub fn interface_towards(host: &str, port: u16) -> Option<String> {
    let peer = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let local = source_address(peer).ok()?;
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that freeifaddrs frees; each entry is read while it lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut found = None;
        let mut at = list;
        while !at.is_null() && found.is_none() {
            let entry = &*at;
            if !entry.ifa_addr.is_null() && address_of(entry.ifa_addr) == Some(local) {
                found = Some(
                    std::ffi::CStr::from_ptr(entry.ifa_name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            at = entry.ifa_next;
        }
        libc::freeifaddrs(list);
        found
    }
}

/// This machine's address on the route to `peer`: what a UDP socket connected there sends from
/// (connecting one sends nothing).
pub fn source_address(peer: std::net::SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let any: std::net::SocketAddr = match peer {
        std::net::SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(peer)?;
    Ok(socket.local_addr()?.ip())
}

/// The IP address of a `sockaddr` of family AF_INET or AF_INET6.
///
/// # Safety
/// `sa` points to a valid `sockaddr` of the length its family implies.
unsafe fn address_of(sa: *const libc::sockaddr) -> Option<std::net::IpAddr> {
    // SAFETY: as the caller promises; the family says which struct it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let v4 = &*(sa as *const libc::sockaddr_in);
                Some(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let v6 = &*(sa as *const libc::sockaddr_in6);
                Some(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

/// A port free on loopback now.
pub fn free_port() -> Result<u16> {
    // Bind port 0 and release it: the OS hands out a port nobody holds now. Rank 0's TCPStore binds
    // it a moment later; a collision meanwhile fails the rendezvous with a clear error.
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("no free port")?;
    Ok(l.local_addr()?.port())
}

/// A port kept from every other process until dropped: bound on `ip` but not listening, so no
/// one else can bind it, and a peer that connects early is refused (c10d's client retries) instead
/// of sitting in a backlog nobody accepts. A gang's node 0 holds the port it offered while the gang
/// forms (up to `--gang-seconds`) and drops it just before its rank 0 binds it.
#[derive(Debug)]
pub struct PortHold {
    _socket: socket2::Socket,
    port: u16,
}

impl PortHold {
    pub fn on(ip: std::net::IpAddr) -> Result<PortHold> {
        let addr = std::net::SocketAddr::new(ip, 0);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .context("no socket for a port")?;
        socket.bind(&addr.into()).context("no free port")?;
        let port = socket
            .local_addr()?
            .as_socket()
            .context("the bound address is not an IP address")?
            .port();
        Ok(PortHold {
            _socket: socket,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Starts the node's ranks as children of this process (same executable and arguments), waits for
/// them, and returns the exit code for the whole run: 0 when every rank succeeded, otherwise the
/// first failure's (a rank that fails makes the launcher stop the others).
pub fn launch(plan: &LaunchPlan) -> Result<i32> {
    let port = rendezvous_port(plan)?;
    let signals = forward_signals()?;
    let (children, pumps) = spawn_ranks(plan, port)?;
    let (status, failure) = supervise(plan, children, &signals)?;
    for p in pumps {
        let _ = p.join();
    }
    if let Some((_, code)) = failure {
        return Ok(code);
    }
    // Ranks agree on the outcome (diverged and interrupted are decided collectively): rank 0's.
    Ok(status[0].map(exit_code).unwrap_or(1))
}

/// The plan checked, and the rendezvous port: the given one, or a free one for a single node.
fn rendezvous_port(plan: &LaunchPlan) -> Result<u16> {
    if plan.nnodes == 0 || plan.node_rank >= plan.nnodes {
        bail!(
            "--node-rank {} is not in --nnodes {}",
            plan.node_rank,
            plan.nnodes
        );
    }
    if plan.nnodes > 1 && plan.master_port == 0 {
        bail!("--nnodes > 1 needs --master-addr and --master-port (the same on every node)");
    }
    if plan.master_port == 0 {
        free_port()
    } else {
        Ok(plan.master_port)
    }
}

/// SIGTERM/SIGINT reach the launcher; they are passed on to every rank (which then stop together
/// after a committed epoch). A second signal is passed on too: the ranks then stop at once. The
/// count of signals received so far.
fn forward_signals() -> Result<Arc<AtomicUsize>> {
    let signals = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let s = signals.clone();
        // SAFETY: the handler only touches an atomic.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                s.fetch_add(1, Ordering::SeqCst);
            })?;
        }
    }
    Ok(signals)
}

/// Starts this node's ranks (this executable with torchrun's environment), their output prefixed
/// with their rank.
fn spawn_ranks(
    plan: &LaunchPlan,
    port: u16,
) -> Result<(Vec<Child>, Vec<std::thread::JoinHandle<()>>)> {
    let world = plan.nproc_per_node * plan.nnodes;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = threads_per_rank(plan.nproc_per_node);
    // Gloo listens on the address this host's name resolves to, often 127.0.0.1 or an address the
    // other nodes cannot reach: across nodes its ranks listen on the interface that routes to the
    // master instead, unless the operator chose one (`GLOO_SOCKET_IFNAME`).
    let gloo_ifname = (plan.nnodes > 1 && std::env::var_os("GLOO_SOCKET_IFNAME").is_none())
        .then(|| interface_towards(&plan.master_addr, port))
        .flatten();
    let mut children: Vec<Child> = Vec::new();
    let mut pumps = Vec::new();
    for local in 0..plan.nproc_per_node {
        let rank = plan.node_rank * plan.nproc_per_node + local;
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env(CHILD_MARKER, "1")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", plan.nproc_per_node.to_string())
            .env("GROUP_RANK", plan.node_rank.to_string())
            .env("MASTER_ADDR", &plan.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        if let Some(ifname) = &gloo_ifname {
            cmd.env("GLOO_SOCKET_IFNAME", ifname);
        }
        // SAFETY: prctl is async-signal-safe; a launcher killed by SIGKILL takes its ranks with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&children, libc::SIGKILL);
                return Err(e).context("cannot start a rank");
            }
        };
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        pumps.push(prefix_lines(out, rank, false));
        pumps.push(prefix_lines(err, rank, true));
        children.push(child);
    }
    Ok((children, pumps))
}

/// Until every rank has exited: passes signals on, and when a rank fails, stops the others
/// (SIGTERM, then SIGKILL after 10 s). Each rank's exit status, and the first failure's (rank, code).
#[allow(clippy::type_complexity)]
fn supervise(
    plan: &LaunchPlan,
    mut children: Vec<Child>,
    signals: &AtomicUsize,
) -> Result<(Vec<Option<ExitStatus>>, Option<(usize, i32)>)> {
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut forwarded = 0usize;
    let mut failure: Option<(usize, i32)> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        let received = signals.load(Ordering::SeqCst);
        while forwarded < received {
            forwarded += 1;
            stop_all(&children, libc::SIGTERM);
        }
        for i in 0..children.len() {
            if status[i].is_some() {
                continue;
            }
            let Some(s) = children[i].try_wait()? else {
                continue;
            };
            status[i] = Some(s);
            let code = exit_code(s);
            let failed = ![0, crate::EXIT_DIVERGED, crate::EXIT_INTERRUPTED].contains(&code);
            if failed && failure.is_none() {
                let rank = plan.node_rank * plan.nproc_per_node + i;
                eprintln!("[launcher] rank {rank} failed ({s}); stopping the other ranks");
                failure = Some((rank, code));
                stop_all(&children, libc::SIGTERM);
                kill_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
        if status.iter().all(Option::is_some) {
            return Ok((status, failure));
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            stop_all(&children, libc::SIGKILL);
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

fn stop_all(children: &[Child], sig: i32) {
    for c in children {
        // SAFETY: kill on our own child's pid; harmless if it already exited (not yet reaped).
        unsafe {
            libc::kill(c.id() as libc::pid_t, sig);
        }
    }
}

fn prefix_lines(
    stream: impl std::io::Read + Send + 'static,
    rank: usize,
    stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if stderr {
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "[rank {rank}] {line}");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// While held, the port is nobody else's (a bind fails, a connect is refused); once dropped,
    /// rank 0 can bind it.
    #[test]
    fn a_held_port_is_kept_from_others_until_dropped() {
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let hold = PortHold::on(ip).unwrap();
        let port = hold.port();
        assert_ne!(port, 0);
        assert!(std::net::TcpListener::bind((ip, port)).is_err());
        let refused = std::net::TcpStream::connect((ip, port)).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        drop(hold);
        std::net::TcpListener::bind((ip, port)).unwrap();
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_are_read() {
        let e = env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29600"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.local_world), (3, 4, 1, 2));
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.2", 29600));
        assert!(e.agent_store);
        assert_eq!(env(&[]).unwrap(), None);
    }

    #[test]
    fn the_interface_towards_a_host_is_the_one_its_route_leaves_by() {
        assert_eq!(interface_towards("127.0.0.1", 9).as_deref(), Some("lo"));
        assert_eq!(interface_towards("no-such-host.invalid", 9), None);
    }

    #[test]
    fn bad_variables_are_named() {
        let e = env(&[("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK"), "{e}");
        let e = env(&[("WORLD_SIZE", "2"), ("RANK", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=2"), "{e}");
        let e = env(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}
