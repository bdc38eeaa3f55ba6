//! Safe wrappers over `csrc/shim.cpp`.
use std::ffi::c_void;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

extern "C" {
    fn seedshim_last_error() -> *const c_char;
    fn seedshim_set_autocast_bf16(enabled: c_int, cuda: c_int) -> c_int;
    fn seedshim_set_tf32(enabled: c_int) -> c_int;
    fn seedshim_ops_start() -> c_int;
    fn seedshim_ops_names(buf: *mut c_char, cap: i64) -> i64;
    fn seedshim_ops_stop(top: *mut i64, syncs: *mut i64) -> c_int;
    fn seedshim_fused_sgd(
        params: *const *const c_void,
        grads: *const *const c_void,
        n: c_int,
        bufs: *const *const c_void,
        n_bufs: c_int,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        first_step: c_int,
        found_inf: *const c_void,
    ) -> c_int;
    fn seedshim_set_grads_none(params: *const *const c_void, n: c_int) -> c_int;
}

fn last_error() -> String {
    // SAFETY: the shim returns a pointer to a thread-local, NUL-terminated string it owns.
    unsafe { CStr::from_ptr(seedshim_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Turns autocast to bfloat16 on or off for the calling thread, for `device`'s type (CUDA or CPU).
pub fn set_autocast_bf16(enabled: bool, device: tch::Device) -> anyhow::Result<()> {
    let cuda = device.is_cuda() as c_int;
    // SAFETY: plain call; the shim catches every C++ exception.
    if unsafe { seedshim_set_autocast_bf16(enabled as c_int, cuda) } != 0 {
        anyhow::bail!("enabling bf16 autocast failed: {}", last_error());
    }
    Ok(())
}

/// Lets CUDA matmuls and convolutions use TF32 (or not), process-wide.
pub fn set_tf32(enabled: bool) -> anyhow::Result<()> {
    // SAFETY: plain call; the shim catches every C++ exception.
    if unsafe { seedshim_set_tf32(enabled as c_int) } != 0 {
        anyhow::bail!("setting TF32 failed: {}", last_error());
    }
    Ok(())
}

/// ATen ops dispatched while `f` ran: the top-level ones (no other aten:: op running on their
/// thread, as torch.profiler's tree shows them) and the blocking host-device syncs
/// (`_local_scalar_dense`, `nonzero`). Not reentrant: one count at a time per process.
pub fn count_ops<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, OpCount)> {
    // SAFETY: plain call; the shim catches every C++ exception.
    if unsafe { seedshim_ops_start() } != 0 {
        anyhow::bail!("cannot count ops: {}", last_error());
    }
    let out = f();
    let (mut top, mut syncs) = (0i64, 0i64);
    // SAFETY: both pointers are to live locals the shim writes once.
    if unsafe { seedshim_ops_stop(&mut top, &mut syncs) } != 0 {
        anyhow::bail!("cannot count ops: {}", last_error());
    }
    Ok((out, OpCount { top, syncs }))
}

/// The last [`count_ops`]'s top-level ops by name (`aten::addmm`, ...), sorted by name.
pub fn counted_op_names() -> Vec<(String, i64)> {
    // SAFETY: a null buffer with capacity 0 only asks for the size.
    let need = unsafe { seedshim_ops_names(std::ptr::null_mut(), 0) };
    let mut buf = vec![0u8; need.max(0) as usize];
    // SAFETY: `buf` holds `need` writable bytes; the shim writes at most that many.
    unsafe { seedshim_ops_names(buf.as_mut_ptr() as *mut c_char, need) };
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once('\t')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// What [`count_ops`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCount {
    pub top: i64,
    pub syncs: i64,
}

/// Each tensor's `at::Tensor*` (what tch's handle points to), for the shim's tensor lists.
fn handles(ts: &[&tch::Tensor]) -> Vec<*const c_void> {
    ts.iter().map(|t| t.as_ptr() as *const c_void).collect()
}

/// One `at::_fused_sgd_` step over `params` (PyTorch's SGD with `fused=True`): weight decay folded
/// into the gradient, momentum buffers updated (set to the gradient on `first_step`), parameters
/// moved, all in one multi-tensor kernel. `bufs` is empty when momentum is 0. With `found_inf`
/// (a one-element f32 tensor on the parameters' device) holding 1, nothing is changed.
#[allow(clippy::too_many_arguments)]
pub fn fused_sgd(
    params: &[&tch::Tensor],
    grads: &[&tch::Tensor],
    bufs: &[&tch::Tensor],
    weight_decay: f64,
    momentum: f64,
    lr: f64,
    first_step: bool,
    found_inf: Option<&tch::Tensor>,
) -> anyhow::Result<()> {
    anyhow::ensure!(params.len() == grads.len(), "one gradient per parameter");
    anyhow::ensure!(
        bufs.is_empty() || bufs.len() == params.len(),
        "one buffer per parameter"
    );
    let (p, g, b) = (handles(params), handles(grads), handles(bufs));
    // SAFETY: the handles point to tensors borrowed for the duration of the call; the shim copies
    // them into at::Tensor lists (reference counts) and catches every C++ exception.
    let rc = unsafe {
        seedshim_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            p.len() as c_int,
            b.as_ptr(),
            b.len() as c_int,
            weight_decay,
            momentum,
            lr,
            first_step as c_int,
            found_inf.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_void),
        )
    };
    if rc != 0 {
        anyhow::bail!("the fused SGD step failed: {}", last_error());
    }
    Ok(())
}

/// Sets every parameter's gradient to None (undefined), as `zero_grad(set_to_none=True)`.
pub fn set_grads_none(params: &[tch::Tensor]) -> anyhow::Result<()> {
    let p: Vec<&tch::Tensor> = params.iter().collect();
    let h = handles(&p);
    // SAFETY: as in fused_sgd; the shim only resets each tensor's gradient.
    if unsafe { seedshim_set_grads_none(h.as_ptr(), h.len() as c_int) } != 0 {
        anyhow::bail!("cannot clear the gradients: {}", last_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    #[test]
    fn bf16_autocast_reaches_cpu_matmuls_and_turns_off() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        super::set_autocast_bf16(true, Device::Cpu).unwrap();
        let on = a.matmul(&a.tr());
        super::set_autocast_bf16(false, Device::Cpu).unwrap();
        let off = a.matmul(&a.tr());
        assert_eq!((on.kind(), off.kind()), (Kind::BFloat16, Kind::Float));
    }
}
