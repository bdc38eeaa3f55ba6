//! The worker side of the sweep orchestrator: the study's trainer, run from the command line.
//!
//! Layout, leaves first:
//! - [`data`]: CIFAR-10 records (official binary format, verified download) and a synthetic set.
//! - [`augment`]: the study's train augmentation on whole batches, driven by per-epoch plans.
//! - [`model`]: the study's network (residual stages, then self-attention), named as PyTorch names it.
//! - [`optim`]: the lr staircase and a plain-tensor SGD whose momentum can be saved for resume.
//! - [`metrics`]: confusion matrix, accuracy and macro precision/recall/F1 as scikit-learn computes them.
//! - [`checkpoint`]: study-named safetensors weights and the atomic resume state.
//! - [`train`]: the epoch loop; it reports each epoch through a callback and knows nothing of HTTP.
//! - [`bench`]: throughput of the full network beside PyTorch eager.
//! - [`service`]: `worker run`: claims jobs from a coordinator and supervises their trainers.
//! - [`cli`]: `worker train` / `worker bench` / `worker run` argument parsing.
//! - [`shim`]: the C++ pieces of libtorch that tch does not expose.

pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod ddp;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod service;
pub mod shim;
pub mod train;

/// Exit code of a run that ended `diverged` (non-finite loss): distinct from success (0), a crash or
/// bad input (1) and a usage error (2), so a supervising worker can tell a result from a failure.
pub const EXIT_DIVERGED: i32 = 3;

/// Exit code of a run stopped by SIGTERM/SIGINT after committing its last epoch: resumable.
pub const EXIT_INTERRUPTED: i32 = 4;
