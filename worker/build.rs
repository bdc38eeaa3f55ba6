//! Link settings that make `worker` run with no environment variables, on machines with or without
//! a GPU (see ../shared/TOOLCHAIN.md), and the small C++ shim for what tch does not expose.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // torch-sys (`links = "tch"`) tells dependants where libtorch's shared libraries are.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"),
    );
    // torch-sys passes its rpath only to its own C++ objects; give our binaries, tests and benches one too.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // rustc links with --as-needed, which drops libtorch.so (and with it libtorch_cuda.so): CUDA would
    // then never register. A slim CPU-only torch install has no cuBLAS and this link would fail, so gate it.
    if lib.join("../../nvidia/cu13/lib/libcublas.so.13").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }

    let include = lib.join("../include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // ProcessGroupGloo.hpp is empty without it; gloo's headers come from libgloo-dev, its code
        // from libtorch_cpu.so (the shim only calls exported symbols and virtuals).
        .define("USE_C10D_GLOO", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-interference-size")
        .file("csrc/shim.cpp")
        .file("csrc/dist.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        // ProcessGroupNCCL needs the CUDA and NCCL headers installed with torch, plus two header-only
        // packages torch does not pull in (scripts/setup.sh --nccl puts them in .venv/cuda-headers).
        let nvidia = lib.join("../../nvidia");
        let extra = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/cuda-headers/nvidia");
        build
            .define("USE_C10D_NCCL", None)
            .define("SEED_NCCL", None)
            .include(nvidia.join("cu13/include"))
            .include(nvidia.join("nccl/include"))
            .include(extra.join("cu13/include"))
            .include(extra.join("cu13/include/cccl"));
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    build.compile("seedshim");
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");

    // The commit is recorded in every summary.json, so results can be traced to the code that made them.
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SEED_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
