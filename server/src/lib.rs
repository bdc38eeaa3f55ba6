//! The sweep coordinator: an axum service over one SQLite file.
//!
//! Layout:
//! - [`study`]: the study's table (its first README) and our sweep's results beside it.
//! - `protocol` (its own crate): the worker protocol's messages, shared with the worker.
//! - [`search`]: random search, trials drawn from `[search.space]` with a seed.
//! - [`early_stop`]: ASHA and the median rule (Optuna's decisions), judged as metrics arrive.
//! - [`spec`]: sweep files parsed and validated at the edge; grid expansion as a pure function.
//! - [`store`]: every query (plain SQL, checked at compile time), grouped by state transition: the
//!   lease state machine, sweeps, read models. [`writer`] batches concurrent writes into one
//!   transaction (group commit). [`views`]: the read side's answer shapes.
//! - [`auth`]: who may call what (admin and worker tokens, dashboard sessions), the Host allowlist,
//!   security headers.
//! - [`api`]: the REST routes and the worker protocol; [`error`] maps every failure to HTTP in one place.
//! - [`artifacts`]: job checkpoints uploaded by workers, kept by job id under the artifacts folder.
//! - [`events`]: server-sent events for the dashboard; [`telemetry`]: Prometheus counters.
//! - [`export`]: the study's markdown table, CSV, JSON and the README block; [`figures`]: its plots.
//! - [`startup`]: `Application::build` / `run_until_stopped`, the lease reaper, shutdown signals.
//! - [`client`] and [`cli`]: the `server` command line (serve, and thin clients of the API).
//! - [`loadgen`]: simulated workers against a real server, for the benchmark.
//! - [`state`]: the `AppState` of cheap handles and the injectable clock.
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
