//! The sweep coordinator: an axum service over one SQLite file.
//!
//! Where each module lives and why: ARCHITECTURE.md's code map, the one map of the code (a test
//! checks that it names every module).
// The coordinator and the protocol need no unsafe code; only the worker (libtorch, signals) does.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod cli;
pub mod credentials;
pub mod draw;
pub mod events;
pub mod http;
pub mod lifecycle;
pub mod rendezvous;
pub mod results;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod store;
pub mod sweep;
pub mod telemetry;
