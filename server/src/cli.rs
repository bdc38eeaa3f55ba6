//! The `server` command line: `serve`, and the terminal clients.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::Client;
use crate::startup::{Application, ServeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "server",
    version,
    about = "The sweep coordinator: sweeps and jobs in SQLite, a REST API, results"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The coordinator's address.
    #[arg(long, env = "SWEEP_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator.
    Serve {
        #[arg(long, default_value = "sweeps.db")]
        db: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Bearer token for writes; generated at first start (stored as <db>.token) when not given.
        #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where uploaded checkpoints are kept (default: <db>.artifacts/).
        #[arg(long)]
        artifacts: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        lease_seconds: u64,
        /// Reads need the token too.
        #[arg(long)]
        private: bool,
        /// Largest checkpoint a worker may upload, in MiB.
        #[arg(long, default_value_t = 1024)]
        max_checkpoint_mib: u64,
    },
    /// Submit a sweep file (TOML, or JSON by extension).
    Submit {
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Sweeps, or the jobs of one sweep.
    Status {
        sweep: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Draw the study's figures of a sweep (lr, loss, acc, batch_and_loss, batch_and_acc) as PNG files.
    Plot {
        sweep: i64,
        #[arg(long, default_value = "images")]
        out: PathBuf,
        /// Headline run of lr/loss/acc (a job id).
        #[arg(long)]
        job: Option<i64>,
        /// lr of the per-batch-size figures.
        #[arg(long)]
        lr: Option<f64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Benchmark: simulated workers (claim, 3 metrics, finish) against a real coordinator.
    Loadgen(crate::loadgen::LoadArgs),
    /// A sweep's results: markdown (the study's table), csv or json; or rewrite a README's results block.
    Export {
        sweep: i64,
        #[arg(long, default_value = "markdown")]
        format: String,
        /// Precision, recall, F1, epochs and wall-time columns.
        #[arg(long)]
        extra: bool,
        /// The study's Chinese headings.
        #[arg(long)]
        chinese: bool,
        /// Rewrite the block between <!-- results:begin --> and <!-- results:end --> of this file.
        #[arg(long)]
        readme: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            db,
            listen,
            token,
            artifacts,
            lease_seconds,
            private,
            max_checkpoint_mib,
        } => {
            let mut cfg = ServeConfig::new(db);
            cfg.listen = listen;
            cfg.token = token;
            if let Some(a) = artifacts {
                cfg.artifacts = a;
            }
            cfg.lease_ms = lease_seconds as i64 * 1000;
            cfg.private = private;
            cfg.max_checkpoint_bytes = max_checkpoint_mib << 20;
            let app = Application::build(cfg.clone()).await?;
            if app.new_token {
                println!(
                    "generated token (stored in {}): {}",
                    crate::startup::token_path(&cfg.db).display(),
                    app.token()
                );
            }
            tracing::info!(db = %cfg.db.display(), port = app.port(), "coordinator listening on {}", listen.ip());
            println!("listening on http://{}:{}", listen.ip(), app.port());
            app.run_until_stopped(crate::startup::shutdown_signal())
                .await
        }
        Command::Loadgen(args) => crate::loadgen::run(&args).await,
        Command::Plot {
            sweep,
            out,
            job,
            lr,
            remote,
        } => {
            let client = Client::new(&remote.server, remote.token);
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut query = vec![];
            if let Some(j) = job {
                query.push(format!("job={j}"));
            }
            if let Some(l) = lr {
                query.push(format!("lr={l}"));
            }
            for name in crate::figures::NAMES {
                let bytes = client
                    .get_bytes(&format!(
                        "/api/sweeps/{sweep}/figures/{name}.png?{}",
                        query.join("&")
                    ))
                    .await?;
                let path = out.join(format!("{name}.png"));
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Submit { file, remote } => {
            let r = Client::new(&remote.server, remote.token)
                .submit(&file)
                .await?;
            println!("submitted sweep {} with {} jobs", r["id"], r["jobs"]);
            Ok(())
        }
        Command::Status { sweep, remote } => {
            print!(
                "{}",
                Client::new(&remote.server, remote.token)
                    .status(sweep)
                    .await?
            );
            Ok(())
        }
        Command::Export {
            sweep,
            format,
            extra,
            chinese,
            readme,
            remote,
        } => {
            let client = Client::new(&remote.server, remote.token);
            match readme {
                None => {
                    let path = format!("/api/sweeps/{sweep}/results?format={format}&extra={extra}&chinese={chinese}");
                    print!("{}", client.get_text(&path).await?);
                }
                Some(file) => {
                    let table = client.get_text(&format!("/api/sweeps/{sweep}/results?format=markdown&extra={extra}&chinese={chinese}")).await?;
                    let detail: crate::store::SweepDetail = serde_json::from_value(
                        client.get_json(&format!("/api/sweeps/{sweep}")).await?,
                    )
                    .context("unexpected sweep document")?;
                    let block = format!("{}\n\n{table}", crate::export::provenance(&detail));
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let new = crate::export::rewrite_block(&text, &block)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    std::fs::write(&file, new)?;
                    println!("updated the results block of {}", file.display());
                }
            }
            Ok(())
        }
    }
}
