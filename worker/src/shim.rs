//! Safe wrappers over `csrc/shim.cpp`.
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

extern "C" {
    fn seedshim_last_error() -> *const c_char;
    fn seedshim_set_autocast_bf16(enabled: c_int) -> c_int;
}

fn last_error() -> String {
    // SAFETY: the shim returns a pointer to a thread-local, NUL-terminated string it owns.
    unsafe { CStr::from_ptr(seedshim_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Turns CUDA autocast to bfloat16 on or off for the calling thread.
pub fn set_autocast_bf16(enabled: bool) -> anyhow::Result<()> {
    // SAFETY: plain call; the shim catches every C++ exception.
    if unsafe { seedshim_set_autocast_bf16(enabled as c_int) } != 0 {
        anyhow::bail!("enabling bf16 autocast failed: {}", last_error());
    }
    Ok(())
}
