//! The configuration of one training run: `worker train`'s flags (clap), a job's params (serde,
//! snake_case) and `summary.json`. The options' types, bounds and defaults are the protocol's
//! ([`protocol::train`]), the same the coordinator checks a sweep with.
use clap::{Args, ValueEnum};
use protocol::train::defaults as D;
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
    #[arg(long, default_value = D::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Epochs to train.
    #[arg(long, default_value_t = D::EPOCHS)]
    pub epochs: u32,
    /// Initial learning rate.
    #[arg(long, default_value_t = D::LR)]
    pub lr: f64,
    /// Batch size per process (the study's `--batch-size`).
    #[arg(long, default_value_t = D::BATCH_SIZE)]
    pub batch_size: u32,
    /// SGD momentum.
    #[arg(long, default_value_t = D::MOMENTUM)]
    pub momentum: f64,
    /// SGD weight decay (L2).
    #[arg(long, default_value_t = D::WEIGHT_DECAY)]
    pub weight_decay: f64,
    /// Epochs of linear lr warm-up.
    #[arg(long, default_value_t = D::WARMUP_EPOCHS)]
    pub warmup_epochs: u32,
    /// The warm-up's starting fraction of the lr.
    #[arg(long, default_value_t = D::WARMUP_FACTOR)]
    pub warmup_factor: f64,
    /// Epochs after which the lr is multiplied by gamma.
    #[arg(long, value_delimiter = ',', default_values_t = D::MILESTONES)]
    pub milestones: Vec<u32>,
    /// Factor applied to the lr at each milestone (the study's `step_factor=0.1`).
    #[arg(long, default_value_t = D::GAMMA)]
    pub gamma: f64,
    /// Evaluate on the whole test set every N epochs (and always after the last one).
    #[arg(long, default_value_t = D::EVAL_INTERVAL)]
    pub eval_interval: u32,
    /// Batch size of evaluation.
    #[arg(long, default_value_t = D::EVAL_BATCH_SIZE)]
    pub eval_batch_size: u32,
    /// Seed of the weights' initialisation, the data order and augmentation.
    #[arg(long, default_value_t = D::SEED)]
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = D::DEVICE)]
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
    #[arg(long, value_delimiter = ',', default_values_t = D::MODEL_WIDTHS)]
    pub model_widths: Vec<i64>,
    /// Number of attention blocks.
    #[arg(long, default_value_t = D::MODEL_DEPTH)]
    pub model_depth: usize,
    /// Heads of each attention block.
    #[arg(long, default_value_t = D::MODEL_HEADS)]
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
    #[arg(long, default_value_t = D::NPROC_PER_NODE)]
    pub nproc_per_node: u32,
    /// With more than one rank, plain per-rank BatchNorm instead of SyncBatchNorm.
    #[arg(long)]
    pub no_sync_bn: bool,
    /// Collective backend: gloo or nccl (default: nccl on CUDA, gloo on CPU).
    #[arg(long)]
    pub dist_backend: Option<String>,
    /// Seconds a rank waits for its peers (rendezvous and each collective) before failing.
    #[arg(long, default_value_t = D::DIST_TIMEOUT)]
    pub dist_timeout: u64,
    /// The optimiser's settings from given epochs on (a population-based training's replay), as
    /// JSON: `[{"epoch": 5, "lr": 0.012, "momentum": 0.85}, ...]`; each entry's lr is the base the
    /// warm-up and milestones then apply to.
    #[arg(long, value_parser = parse_schedule)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// `--schedule`: changes of lr, momentum and weight decay at set epochs (strictly increasing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Schedule(pub Vec<ScheduleStep>);

/// One `--schedule` entry: from `epoch` (1-based) on, the settings it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleStep {
    pub epoch: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

/// The settings a schedule gives one epoch (None: the configuration's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scheduled {
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
}

impl Schedule {
    /// Each setting as the last entry at or before `epoch` that names it left it.
    pub fn at(&self, epoch: u32) -> Scheduled {
        let mut s = Scheduled::default();
        for step in self.0.iter().filter(|s| s.epoch <= epoch) {
            s.lr = step.lr.or(s.lr);
            s.momentum = step.momentum.or(s.momentum);
            s.weight_decay = step.weight_decay.or(s.weight_decay);
        }
        s
    }
}

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    serde_json::from_str(text).map_err(|e| format!("not a schedule ({e}): {text}"))
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
    /// Checks every option against its type and bounds, and the options that depend on each
    /// other, with the protocol's rules (the coordinator's own); a bad value gets a message naming
    /// its flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::anyhow;
        let flag = |k: &str| format!("--{}", k.replace('_', "-"));
        let v = serde_json::to_value(self)?;
        let options = v.as_object().expect("a config is an object");
        for (k, value) in options {
            use protocol::train::KeyType;
            let ty = protocol::train::TRAIN_KEYS
                .iter()
                .find(|(name, _)| name == k);
            let float = ty.is_some_and(|(_, t)| {
                matches!(t, KeyType::PositiveFloat | KeyType::NonNegativeFloat)
            });
            if value.is_null() && float {
                // serde writes a NaN or an infinity as null.
                return Err(anyhow!("{} must be a finite number", flag(k)));
            }
            if value.is_null() || ty.is_none() {
                continue; // unset options, and the worker's own settings (any URL, any md5)
            }
            protocol::train::check(k, value, protocol::train::Paths::Any)
                .map_err(|why| anyhow!("{} {why}", flag(k)))?;
        }
        protocol::train::check_combination(options)
            .map_err(|(k, why)| anyhow!("{}: {why}", flag(k)))?;
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
                serde_json::Value::Array(a) if a.iter().any(serde_json::Value::is_object) => {
                    // A list of tables (--schedule) goes as JSON.
                    args.push(flag);
                    args.push(val.to_string());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option of `worker train` is in the protocol's table (a sweep key) or is a worker's own
    /// setting, and nothing else is; the defaults the coordinator schedules by are the trainer's.
    #[test]
    fn the_options_are_the_protocols() {
        // An unset schedule is left out of the configuration's JSON (runs' fingerprints before
        // it existed still match); set, it is an option like the others.
        let with_schedule = TrainConfig {
            schedule: Some(Schedule(vec![])),
            ..TrainConfig::default()
        };
        let ours: std::collections::BTreeSet<String> = serde_json::to_value(with_schedule)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let table: std::collections::BTreeSet<String> = protocol::train::TRAIN_KEYS
            .iter()
            .map(|(k, _)| k.to_string())
            .chain(
                protocol::train::WORKER_SETTINGS
                    .iter()
                    .map(|(k, _)| k.to_string()),
            )
            .collect();
        assert_eq!(ours, table);
        let d = TrainConfig::default();
        let shape = protocol::JobShape::of(&serde_json::Map::new());
        assert_eq!(d.epochs as i64, shape.epochs);
        assert_eq!(d.batch_size as i64, shape.batch_size);
        assert_eq!(d.nproc_per_node as i64, shape.nproc_per_node);
        d.validate().expect("the defaults are valid");
    }

    #[test]
    fn a_schedule_survives_the_command_line_and_carries_each_setting_forward() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            c: TrainConfig,
        }
        let text = r#"[{"epoch": 3, "lr": 0.1}, {"epoch": 5, "momentum": 0.5}]"#;
        let c = TrainConfig {
            schedule: Some(parse_schedule(text).unwrap()),
            ..TrainConfig::default()
        };
        c.validate().unwrap();
        // to_args starts with "train", which clap takes as the program's name.
        assert_eq!(Wrap::parse_from(c.to_args()).c, c);
        let s = c.schedule.unwrap();
        assert_eq!(s.at(2), Scheduled::default());
        assert_eq!(s.at(3).lr, Some(0.1));
        assert_eq!(
            s.at(9),
            Scheduled {
                lr: Some(0.1),
                momentum: Some(0.5),
                weight_decay: None
            }
        );
        assert!(parse_schedule(r#"[{"epoch": 3, "beta": 1}]"#).is_err());
    }

    /// The command line is checked with the protocol's bounds and combinations, each error naming
    /// its flag.
    #[test]
    fn bad_values_name_their_flag() {
        for (change, flag) in [
            (
                (|c: &mut TrainConfig| c.epochs = 0) as fn(&mut TrainConfig),
                "--epochs",
            ),
            (|c| c.lr = f64::NAN, "--lr"),
            (|c| c.milestones = vec![5, 5], "--milestones"),
            (|c| c.model_heads = 3, "--model-heads"),
            (
                |c| {
                    c.schedule = Some(Schedule(vec![
                        ScheduleStep {
                            epoch: 3,
                            lr: Some(0.1),
                            momentum: None,
                            weight_decay: None,
                        },
                        ScheduleStep {
                            epoch: 2,
                            lr: None,
                            momentum: Some(0.5),
                            weight_decay: None,
                        },
                    ]))
                },
                "--schedule",
            ),
            (|c| c.seed = u64::MAX, "--seed"),
            (
                |c| {
                    c.bf16 = true;
                    c.fp64 = true
                },
                "--fp64",
            ),
        ] {
            let mut c = TrainConfig::default();
            change(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
    }
}
