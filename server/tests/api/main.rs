//! The coordinator end to end: the real server on a random port over a fresh SQLite file per test.
mod commands;
mod daily;
mod dashboard;
mod durability;
mod early_stop;
mod figures;
mod gangs;
mod hardening;
mod helpers;
mod identity;
mod jobs;
mod leases;
mod results;
mod search;
mod specs;
mod state_table;
mod tpe;
