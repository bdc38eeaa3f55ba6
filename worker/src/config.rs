//! The configuration of one training run. It is the single source of truth for `worker train`'s
//! flags (clap), the sweep files' `[train]` keys (serde, snake_case) and `summary.json`.
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Cifar10,
    Synthetic,
}

/// Every option of `worker train`. Defaults are the study's recipe as its first README states it
/// (SEED.md), gamma 0.1 included; the repository's later gamma 0.5 is `--gamma 0.5`.
#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Dataset: the official CIFAR-10 binary records, or a learnable synthetic set made from the seed.
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: DatasetKind,
    /// Directory of the CIFAR-10 binary files; downloaded (md5-verified) when it holds none.
    #[arg(long, default_value = "data/cifar-10-batches-bin")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub epochs: u32,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// Batch size per process (the study's `--batch-size`).
    #[arg(long, default_value_t = 32)]
    pub batch_size: u32,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1)]
    pub warmup_epochs: u32,
    #[arg(long, default_value_t = 0.01)]
    pub warmup_factor: f64,
    /// Epochs after which the lr is multiplied by gamma.
    #[arg(long, value_delimiter = ',', default_value = "60,120,200,260")]
    pub milestones: Vec<u32>,
    /// Factor applied to the lr at each milestone (the study's `step_factor=0.1`).
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Evaluate on the whole test set every N epochs (and always after the last one).
    #[arg(long, default_value_t = 1)]
    pub eval_interval: u32,
    #[arg(long, default_value_t = 512)]
    pub eval_batch_size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Autocast to bfloat16 on the training device, CUDA or CPU (the study ran fp32).
    #[arg(long)]
    pub bf16: bool,
    /// CUDA only: let fp32 matmuls and convolutions use TF32 tensor cores (about 1e-3 relative
    /// error per product; the study ran strict fp32, the default).
    #[arg(long)]
    pub tf32: bool,
    /// Train and evaluate in float64: slow, for checking numerics (e.g. that N ranks with
    /// SyncBatchNorm equal one process with N times the batch, beyond fp32 rounding).
    #[arg(long)]
    pub fp64: bool,
    /// Keep activations and conv weights in channels-last (NHWC) memory format.
    #[arg(long)]
    pub channels_last: bool,
    /// Use only the first N training records.
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Use only the first N test records.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Channel widths of the four stages.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    pub model_widths: Vec<i64>,
    /// Number of attention blocks.
    #[arg(long, default_value_t = 4)]
    pub model_depth: usize,
    #[arg(long, default_value_t = 4)]
    pub model_heads: i64,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Start from a checkpoint with the study's PyTorch names (safetensors).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Write DIR/predictions.csv (index,label,prediction) at each evaluation.
    #[arg(long)]
    pub save_predictions: bool,
    /// Where the CIFAR-10 archive is fetched from when --data-dir is empty.
    #[arg(long, default_value = crate::data::CIFAR10_URL)]
    pub data_url: String,
    /// Expected md5 of that archive.
    #[arg(long, default_value = crate::data::CIFAR10_MD5)]
    pub data_md5: String,
    /// Data-parallel ranks on this machine (DDP through c10d, like torchrun --nproc-per-node);
    /// --batch-size is per rank, as in the study.
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: u32,
    /// With more than one rank, plain per-rank BatchNorm instead of SyncBatchNorm.
    #[arg(long)]
    pub no_sync_bn: bool,
    /// Collective backend: gloo or nccl (default: nccl on CUDA, gloo on CPU).
    #[arg(long)]
    pub dist_backend: Option<String>,
    /// Seconds a rank waits for its peers (rendezvous and each collective) before failing.
    #[arg(long, default_value_t = 300)]
    pub dist_timeout: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            c: TrainConfig,
        }
        Wrap::parse_from(["train"]).c
    }
}

impl TrainConfig {
    /// Checks what clap's types cannot: a bad value gets a message naming its flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            bail!("--batch-size and --eval-batch-size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive finite number, got {}", self.lr);
        }
        if self.eval_interval == 0 {
            bail!("--eval-interval must be at least 1");
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "--milestones must be strictly increasing, got {:?}",
                self.milestones
            );
        }
        if self.model_widths.len() != 4 || self.model_widths.iter().any(|&w| w <= 0) {
            bail!(
                "--model-widths needs four positive widths, got {:?}",
                self.model_widths
            );
        }
        let d = self.model_widths[3];
        if self.model_heads <= 0 || d % self.model_heads != 0 {
            bail!(
                "--model-heads ({}) must divide the last width ({d})",
                self.model_heads
            );
        }
        if self.bf16 && self.fp64 {
            bail!("--bf16 and --fp64 exclude each other");
        }
        if self.nproc_per_node == 0 {
            bail!("--nproc-per-node must be at least 1");
        }
        if let Some(b) = &self.dist_backend {
            crate::ddp::Backend::parse(b)?;
        }
        if self.dist_timeout == 0 {
            bail!("--dist-timeout must be at least 1 second");
        }
        crate::train::parse_device(&self.device)?;
        Ok(())
    }

    /// The `worker train` flags that reproduce this configuration (without `--out`).
    pub fn to_args(&self) -> Vec<String> {
        let v = serde_json::to_value(self).expect("config serialises");
        let mut args = vec!["train".to_string()];
        for (k, val) in v.as_object().expect("an object") {
            let flag = format!("--{}", k.replace('_', "-"));
            match val {
                serde_json::Value::Null | serde_json::Value::Bool(false) => {}
                serde_json::Value::Bool(true) => args.push(flag),
                serde_json::Value::Array(a) => {
                    args.push(flag);
                    args.push(
                        a.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                serde_json::Value::String(s) => {
                    args.push(flag);
                    args.push(s.clone());
                }
                other => {
                    args.push(flag);
                    args.push(other.to_string());
                }
            }
        }
        args
    }

    pub fn model(&self) -> crate::model::ModelConfig {
        crate::model::ModelConfig {
            widths: self.model_widths.clone(),
            depth: self.model_depth,
            heads: self.model_heads,
            classes: 10,
        }
    }
}
