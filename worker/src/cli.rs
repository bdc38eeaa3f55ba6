//! `worker train` and `worker bench`. Errors end as one line on stderr and a non-zero exit.
use crate::config::TrainConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "A sweep's worker: `worker run` pulls jobs from a coordinator and runs them; `worker train` runs one training of the study's network",
    after_help = "Benchmarks (each with its own --help): bench, bench-ddp.\n\
                  Starting workers, step by step: docs/running.md (\"The first hour\")."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull jobs from a coordinator and run them until stopped (SIGTERM: checkpoint, report, exit).
    Run(Box<crate::service::RunArgs>),
    /// Make sure CIFAR-10 is in --data-dir: download and verify the official archive when it is not.
    FetchData {
        /// The directory that gets data_batch_1..5.bin and test_batch.bin.
        #[arg(long, default_value = "data/cifar-10-batches-bin")]
        data_dir: PathBuf,
        /// Where the archive comes from.
        #[arg(long, default_value = crate::data::CIFAR10_URL)]
        data_url: String,
        /// Its expected md5.
        #[arg(long, default_value = crate::data::CIFAR10_MD5)]
        data_md5: String,
    },
    /// Train one run of the study's network (resumes when --out holds an unfinished run).
    Train {
        #[command(flatten)]
        config: Box<TrainConfig>,
        /// Output directory: metrics.jsonl, summary.json, checkpoint.safetensors, resume state
        /// (run as a command job: the job's checkpoint directory).
        #[arg(long, env = "SWEEP_CHECKPOINT_DIR")]
        out: PathBuf,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Print the environment contract of command jobs: the variables a program is started with
    /// (docs/command-jobs.md), and the exit code that means diverged.
    Contract {
        /// As JSON (what a client library checks itself against).
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: training and eval throughput of the full network beside PyTorch eager.
    #[command(hide = true)]
    Bench(crate::bench::BenchArgs),
    /// Benchmark: all-reduce bandwidth and DDP step cost (launches its own ranks).
    #[command(hide = true)]
    BenchDdp(crate::ddp::bench::BenchDdpArgs),
}

/// Where the ranks of a multi-machine run meet (torchrun's flags of the same names).
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// Machines the run spans.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's place among them (0 holds the rendezvous).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Where node 0's rank 0 listens for the others.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// 0: a free port (one machine only).
    #[arg(long, default_value_t = 0)]
    pub master_port: u16,
}

fn train(config: &TrainConfig, out: &std::path::Path, launch: &LaunchArgs) -> anyhow::Result<i32> {
    use crate::ddp::launch as l;
    // The launcher's children, and ranks started by torchrun, carry WORLD_SIZE and train; a plain
    // `worker train --nproc-per-node N` (or --nnodes M) starts its node's ranks.
    let is_rank = std::env::var_os(l::CHILD_MARKER).is_some() || l::RankEnv::from_env()?.is_some();
    if !is_rank && (config.nproc_per_node > 1 || launch.nnodes > 1) {
        config.validate()?;
        return l::launch(&l::LaunchPlan {
            nproc_per_node: config.nproc_per_node as usize,
            nnodes: launch.nnodes,
            node_rank: launch.node_rank,
            master_addr: launch.master_addr.clone(),
            master_port: launch.master_port,
        });
    }
    let s = crate::train::run(config, out, &mut |_| {})?;
    Ok(match s.status {
        crate::train::Status::Completed => 0,
        crate::train::Status::Diverged => crate::EXIT_DIVERGED,
        crate::train::Status::Interrupted => crate::EXIT_INTERRUPTED,
    })
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Ranks' output goes through the launcher's pipes: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Train {
            config,
            out,
            launch,
        } => train(&config, &out, &launch),
        Command::Contract { json } => {
            print_contract(json);
            Ok(0)
        }
        Command::Bench(args) => crate::bench::run(&args).map(|()| 0),
        Command::BenchDdp(args) => crate::ddp::bench::run(&args).map(|()| 0),
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
            // A supervising worker tells this machine's trouble from the run's by the code.
            match e.chain().any(|c| c.is::<crate::data::Unavailable>()) {
                true => crate::EXIT_NO_DATA,
                false => 1,
            }
        }
    }
}

/// `worker contract`: protocol's one definition of the command-job contract, printed.
fn print_contract(json: bool) {
    use protocol::command::env;
    if json {
        let variables: Vec<_> = env::VARIABLES
            .iter()
            .map(|(name, what)| serde_json::json!({"name": name, "description": what}))
            .collect();
        let doc = serde_json::json!({"variables": variables, "exit_diverged": env::EXIT_DIVERGED});
        println!("{doc}");
        return;
    }
    for (name, what) in env::VARIABLES {
        println!("{name:<22} {what}");
    }
    println!(
        "exit code {}            diverged (0 completed, anything else failed)",
        env::EXIT_DIVERGED
    );
}
