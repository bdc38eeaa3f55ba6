//! Data parallelism through PyTorch's c10d (`csrc/dist.cpp`): a safe [`ProcessGroup`] over tch
//! tensors, torchrun's environment contract ([`launch::RankEnv`]) and the self-launcher of
//! `worker train --nproc-per-node N` ([`launch::launch`]).
//!
//! What DDP itself does is split between here (the reducer: bucketed gradient all-reduce during
//! backward; SyncBatchNorm) and `train.rs` (broadcast at start and resume, sharded data and eval).
pub mod bench;
pub mod launch;

use anyhow::{anyhow, bail, Result};
use std::ffi::{c_void, CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

type CTensor = *mut c_void;

extern "C" {
    fn seeddist_last_error() -> *const c_char;
    fn seeddist_init(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        agent_store: c_int,
        backend: *const c_char,
        timeout_ms: i64,
        device_index: c_int,
    ) -> *mut c_void;
    fn seeddist_destroy(h: *mut c_void);
    fn seeddist_allreduce_sum(h: *mut c_void, ts: *const CTensor, n: usize) -> c_int;
    fn seeddist_broadcast(h: *mut c_void, ts: *const CTensor, n: usize, root: c_int) -> c_int;
    fn seeddist_allgather(h: *mut c_void, input: CTensor) -> CTensor;
    fn seeddist_barrier(h: *mut c_void) -> c_int;
    fn seeddist_reducer_new(h: *mut c_void, ts: *const CTensor, n: usize, bucket_mb: i64) -> c_int;
    fn seeddist_reducer_prepare(h: *mut c_void) -> c_int;
    fn seeddist_sync_batch_norm(
        h: *mut c_void,
        x: CTensor,
        w: CTensor,
        b: CTensor,
        running_mean: CTensor,
        running_var: CTensor,
        momentum: f64,
        eps: f64,
    ) -> CTensor;
}

fn last_error() -> String {
    // SAFETY: the shim returns a pointer to a thread-local, NUL-terminated string it owns.
    unsafe { CStr::from_ptr(seeddist_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc != 0 {
        bail!("{what} failed: {}", last_error());
    }
    Ok(())
}

fn ptrs(ts: &[&Tensor]) -> Vec<CTensor> {
    // tch's C_tensor is libtorch's at::Tensor*; the shim copies the handle (shared storage).
    ts.iter().map(|t| t.as_ptr() as CTensor).collect()
}

/// The collective backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => bail!("--dist-backend must be gloo or nccl, got {s:?}"),
        }
    }

    /// The explicit choice if any, else what torch.distributed users pick: nccl for CUDA, gloo
    /// for the CPU.
    pub fn choose(explicit: Option<&str>, device: tch::Device) -> Result<Self> {
        match explicit {
            Some(b) => Backend::parse(b),
            None if device == tch::Device::Cpu => Ok(Backend::Gloo),
            None => Ok(Backend::Nccl),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// Where and how to rendezvous.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world: usize,
    /// torchrun's agent serves the store (TORCHELASTIC_USE_AGENT_STORE): rank 0 is then a client.
    pub agent_store: bool,
    pub backend: Backend,
    /// Bound on rendezvous and on every collective: a dead or stuck peer ends the run with an
    /// error after at most this long.
    pub timeout: Duration,
    pub device_index: usize,
}

/// One process's membership in a group of `world` ranks. Collectives block until every rank has
/// called them; each returns an error (never aborts) when a peer is gone or the timeout passes.
#[derive(Debug)]
pub struct ProcessGroup {
    handle: NonNull<c_void>,
    rank: usize,
    world: usize,
    reducer: bool,
}

impl ProcessGroup {
    pub fn init(o: &InitOptions) -> Result<Self> {
        if o.world == 0 || o.rank >= o.world {
            bail!("rank {} is not in a world of {}", o.rank, o.world);
        }
        let host = CString::new(o.master_addr.as_str())?;
        let backend = CString::new(o.backend.name())?;
        // SAFETY: valid C strings for the duration of the call; the shim catches every exception.
        let h = unsafe {
            seeddist_init(
                host.as_ptr(),
                o.master_port as c_int,
                o.rank as c_int,
                o.world as c_int,
                o.agent_store as c_int,
                backend.as_ptr(),
                o.timeout.as_millis() as i64,
                o.device_index as c_int,
            )
        };
        let handle = NonNull::new(h).ok_or_else(|| {
            anyhow!(
                "rendezvous at {}:{} as rank {}/{} ({}) failed: {}",
                o.master_addr,
                o.master_port,
                o.rank,
                o.world,
                o.backend.name(),
                last_error()
            )
        })?;
        Ok(ProcessGroup {
            handle,
            rank: o.rank,
            world: o.world,
            reducer: false,
        })
    }

    /// Joins the group that torchrun's environment (or our launcher's) describes.
    pub fn from_env(
        e: &launch::RankEnv,
        backend: Backend,
        timeout: Duration,
        device: tch::Device,
    ) -> Result<Self> {
        Self::init(&InitOptions {
            master_addr: e.master_addr.clone(),
            master_port: e.master_port,
            rank: e.rank,
            world: e.world,
            agent_store: e.agent_store,
            backend,
            timeout,
            device_index: match device {
                tch::Device::Cuda(i) => i,
                _ => 0,
            },
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn h(&self) -> *mut c_void {
        self.handle.as_ptr()
    }

    /// Sums each tensor over all ranks, in place (one message for all of them).
    pub fn all_reduce_sum(&self, ts: &[&Tensor]) -> Result<()> {
        let p = ptrs(ts);
        // SAFETY: the handles are live tch tensors for the duration of the call.
        check(
            unsafe { seeddist_allreduce_sum(self.h(), p.as_ptr(), p.len()) },
            "all-reduce",
        )
    }

    /// Overwrites each tensor with `root`'s copy, in place.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize) -> Result<()> {
        let p = ptrs(ts);
        // SAFETY: as in all_reduce_sum.
        check(
            unsafe { seeddist_broadcast(self.h(), p.as_ptr(), p.len(), root as c_int) },
            "broadcast",
        )
    }

    /// Every rank's `t` (same shape everywhere), stacked: `[world, ...]`.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        // SAFETY: the shim returns a new at::Tensor* we own, or null with an error.
        let out = unsafe { seeddist_allgather(self.h(), t.as_ptr() as CTensor) };
        if out.is_null() {
            bail!("all-gather failed: {}", last_error());
        }
        // SAFETY: a fresh heap at::Tensor, whose ownership passes to tch (deleted on drop).
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: plain call on a live handle.
        check(unsafe { seeddist_barrier(self.h()) }, "barrier")
    }

    /// Installs PyTorch's DDP reducer on these parameters: from now on every backward that
    /// follows [`ProcessGroup::prepare_step`] leaves gradients averaged over ranks in `.grad`,
    /// all-reduced bucket by bucket while backward is still running.
    pub fn sync_gradients(&mut self, params: &[Tensor], bucket_mb: i64) -> Result<()> {
        let refs: Vec<&Tensor> = params.iter().collect();
        let p = ptrs(&refs);
        // SAFETY: the reducer keeps its own handles of the parameters.
        check(
            unsafe { seeddist_reducer_new(self.h(), p.as_ptr(), p.len(), bucket_mb) },
            "creating the gradient reducer",
        )?;
        self.reducer = true;
        Ok(())
    }

    /// Before each training forward (what DDP's forward does around the model's).
    pub fn prepare_step(&self) -> Result<()> {
        if !self.reducer {
            return Ok(());
        }
        // SAFETY: plain call on a live handle.
        check(
            unsafe { seeddist_reducer_prepare(self.h()) },
            "preparing the reducer",
        )
    }

    /// Training-mode batch norm with the statistics of the batch of all ranks together, and the
    /// matching gradient in backward (torch.nn.SyncBatchNorm). Updates the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_batch_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        // SAFETY: live handles; the result is a new at::Tensor* we own, or null.
        let out = unsafe {
            seeddist_sync_batch_norm(
                self.h(),
                x.as_ptr() as CTensor,
                weight.as_ptr() as CTensor,
                bias.as_ptr() as CTensor,
                running_mean.as_ptr() as CTensor,
                running_var.as_ptr() as CTensor,
                momentum,
                eps,
            )
        };
        if out.is_null() {
            bail!("SyncBatchNorm failed: {}", last_error());
        }
        // SAFETY: ownership of the fresh tensor passes to tch.
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from seeddist_init and is destroyed once.
        unsafe { seeddist_destroy(self.h()) }
    }
}
