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
    /// Make sure CIFAR-10 is in --data-dir: download and verify the official archive when it is not.
    FetchData {
        #[arg(long, default_value = "data/cifar-10-batches-bin")]
        data_dir: PathBuf,
        #[arg(long, default_value = crate::data::CIFAR10_URL)]
        data_url: String,
        #[arg(long, default_value = crate::data::CIFAR10_MD5)]
        data_md5: String,
    },
    /// Pull jobs from a coordinator and run them until stopped (SIGTERM: checkpoint, report, exit).
    Run(crate::service::RunArgs),
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
                crate::train::Status::Interrupted => crate::EXIT_INTERRUPTED,
            })
        }
        Command::Bench(args) => crate::bench::run(&args).map(|()| 0),
        Command::Run(args) => crate::service::run(&args).map(|()| 0),
        Command::FetchData {
            data_dir,
            data_url,
            data_md5,
        } => {
            if crate::data::has_cifar10(&data_dir) {
                println!("CIFAR-10 is in {}", data_dir.display());
                Ok(0)
            } else {
                crate::data::download_cifar10(&data_dir, &data_url, &data_md5).map(|()| {
                    println!(
                        "CIFAR-10 downloaded and verified into {}",
                        data_dir.display()
                    );
                    0
                })
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
