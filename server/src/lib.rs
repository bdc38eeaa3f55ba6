//! The sweep coordinator: an axum service over one SQLite file.
//!
//! Where each module lives and why: ARCHITECTURE.md's code map, the one map of the code (a test
//! checks that it names every module).
// The coordinator and the protocol need no unsafe code; only the worker (libtorch, signals) does.
#![forbid(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod cli;
pub mod client;
pub mod command;
pub mod dashboard;
pub mod early_stop;
pub mod error;
pub mod events;
pub mod export;
pub mod figures;
pub mod loadgen;
pub mod logs;
pub mod search;
pub mod spec;
pub mod startup;
pub mod state;
pub mod store;
pub mod study;
pub mod telemetry;
pub mod views;
pub mod writer;
