//! `worker train` and `worker bench`. Errors end as one line on stderr and a non-zero exit.
use crate::config::TrainConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Runs the study's trainer; later, pulls sweep jobs from a coordinator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one run of the study's network (resumes when --out holds an unfinished run).
    Train {
        #[command(flatten)]
        config: Box<TrainConfig>,
        /// Output directory: metrics.jsonl, summary.json, checkpoint.safetensors, resume state.
        #[arg(long)]
        out: PathBuf,
    },
    /// Training and eval throughput of the full network beside PyTorch eager.
    Bench(crate::bench::BenchArgs),
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Train { config, out } => {
            crate::train::run(&config, &out, &mut |_| {}).map(|s| match s.status {
                crate::train::Status::Completed => 0,
                crate::train::Status::Diverged => crate::EXIT_DIVERGED,
            })
        }
        Command::Bench(args) => crate::bench::run(&args).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
