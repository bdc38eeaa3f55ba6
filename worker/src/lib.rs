//! The worker side of the sweep orchestrator: the study's trainer, run from the command line.
//!
//! Where each module lives and why: ARCHITECTURE.md's code map, the one map of the code (a test
//! checks that it names every module).

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
/// The command-job contract's code, defined once in `protocol`: our trainer is one such program.
pub const EXIT_DIVERGED: i32 = protocol::command::env::EXIT_DIVERGED;

/// Exit code of a run stopped by SIGTERM/SIGINT after committing its last epoch: resumable.
pub const EXIT_INTERRUPTED: i32 = 4;

/// Exit code of a run whose data is not on this machine and could not be fetched: the machine's
/// trouble, not the run's (a supervising worker gives such a job back instead of failing it).
pub const EXIT_NO_DATA: i32 = 5;
