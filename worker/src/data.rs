//! CIFAR-10 in the official binary format, its verified download, and a synthetic stand-in.
//!
//! Images stay as `u8` `[N, 3, 32, 32]` tensors (150 MB for the full training set) and are converted
//! to floats a batch at a time on the training device, inside [`crate::augment`].
use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
pub const CIFAR10_ARCHIVE_BYTES: u64 = 170_052_171;
const RECORD: usize = 1 + 3 * 32 * 32;
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_FILE: &str = "test_batch.bin";
/// The archive's members we unpack; anything else in it is ignored.
const MEMBERS: [&str; 8] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
    "readme.html",
];

/// A split larger than this stays on the host: CIFAR-10's 60,000 images are 184 MB as u8, so this
/// only guards against a far larger dataset filling the GPU the model needs.
pub const DEVICE_SPLIT_MAX_BYTES: u64 = 4 << 30;

/// Images `[N, 3, 32, 32]` (u8) and labels `[N]` (i64), on the CPU when loaded.
#[derive(Debug)]
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This split on `device`, uploaded whole as u8, when it is at most [`DEVICE_SPLIT_MAX_BYTES`];
    /// else on the host (batches are then gathered there and sent per step). On the CPU it is the
    /// same memory.
    pub fn resident(&self, device: Device) -> Split {
        let bytes = self.images.numel() + 8 * self.len();
        let at = if bytes as u64 <= DEVICE_SPLIT_MAX_BYTES {
            device
        } else {
            Device::Cpu
        };
        Split {
            images: self.images.to_device(at),
            labels: self.labels.to_device(at),
        }
    }

    fn truncate(self, limit: Option<usize>) -> Split {
        match limit {
            Some(n) if n < self.len() => Split {
                images: self.images.narrow(0, 0, n as i64),
                labels: self.labels.narrow(0, 0, n as i64),
            },
            _ => self,
        }
    }
}

#[derive(Debug)]
pub struct Dataset {
    pub train: Split,
    pub test: Split,
    pub info: DataInfo,
}

/// Which data a run used, for `summary.json` and the results' provenance line: the full CIFAR-10
/// and the 5,000/1,000-image mini set give different numbers, and a `--limit-train` run of either
/// uses the same count of images, so the records available are kept beside the records used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    /// `cifar10` or `synthetic`.
    pub dataset: String,
    /// Records in the training and test files found (for synthetic data, the sizes made).
    pub train_available: usize,
    pub test_available: usize,
    pub train_used: usize,
    pub test_used: usize,
}

/// Parses one file of CIFAR-10 records (label byte + 3072 pixel bytes, channel-major).
pub fn read_records(path: &Path) -> Result<Split> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 \
             binary file); delete it and run again to download a fresh copy",
            path.display(),
            bytes.len()
        );
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            bail!(
                "{}: record {i} has label {} outside 0..9; this is not CIFAR-10 (CIFAR-100 uses another layout); \
                 delete it and run again to download a fresh copy",
                path.display(),
                rec[0]
            );
        }
        labels.push(rec[0] as i64);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(Split {
        images: Tensor::from_slice(&pixels).reshape([n as i64, 3, 32, 32]),
        labels: Tensor::from_slice(&labels),
    })
}

fn concat(parts: Vec<Split>) -> Split {
    let images: Vec<_> = parts.iter().map(|s| s.images.shallow_clone()).collect();
    let labels: Vec<_> = parts.iter().map(|s| s.labels.shallow_clone()).collect();
    Split {
        images: Tensor::cat(&images, 0),
        labels: Tensor::cat(&labels, 0),
    }
}

/// Loads every `data_batch_N.bin` present (in order) and `test_batch.bin` from `dir`.
pub fn load_cifar10(
    dir: &Path,
    limit_train: Option<usize>,
    limit_test: Option<usize>,
) -> Result<Dataset> {
    let train: Vec<PathBuf> = TRAIN_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    let test = dir.join(TEST_FILE);
    if train.is_empty() || !test.exists() {
        bail!(
            "{} holds no CIFAR-10 binary files (data_batch_N.bin and test_batch.bin); pass --data-dir, or let \
             the trainer download them into an empty directory",
            dir.display()
        );
    }
    let mut parts = Vec::new();
    for p in &train {
        parts.push(read_records(p)?);
        // Stop reading once the limit is met: tests on a few hundred records need not parse 150 MB.
        if limit_train.is_some_and(|n| parts.iter().map(Split::len).sum::<usize>() >= n) {
            break;
        }
    }
    let train_split = concat(parts).truncate(limit_train);
    let test_split = read_records(&test)?.truncate(limit_test);
    let info = DataInfo {
        dataset: "cifar10".into(),
        // From file sizes: the limit above may have stopped reading before the last file.
        train_available: train.iter().map(|p| records_in(p)).sum(),
        test_available: records_in(&test),
        train_used: train_split.len(),
        test_used: test_split.len(),
    };
    Ok(Dataset {
        train: train_split,
        test: test_split,
        info,
    })
}

/// Whole records in a CIFAR-10 binary file, from its size.
fn records_in(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize / RECORD)
}

/// True when `dir` holds at least one training file and the test file.
pub fn has_cifar10(dir: &Path) -> bool {
    dir.join(TEST_FILE).exists() && TRAIN_FILES.iter().any(|f| dir.join(f).exists())
}

/// Downloads the archive into `dir`, checks its size and md5 before unpacking, and unpacks only the
/// expected members. Everything is written under temporary names and renamed at the end, so a failure
/// at any point leaves `dir` as it was.
pub fn download_cifar10(dir: &Path, url: &str, md5_hex: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = dir.join(".cifar-10-binary.tar.gz.partial");
    let staging = dir.join(".unpack.partial");
    let result = fetch_and_unpack(dir, url, md5_hex, &partial, &staging);
    let _ = fs::remove_file(&partial);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_and_unpack(
    dir: &Path,
    url: &str,
    md5_hex: &str,
    partial: &Path,
    staging: &Path,
) -> Result<()> {
    tracing::info!(%url, dest = %dir.display(), "downloading CIFAR-10");
    // Connect and read timeouts, so an unreachable host ends the run with an error rather than a hang.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let response = agent
        .get(url)
        .call()
        // ureq's error names the URL.
        .map_err(|e| anyhow!("download failed: {e}"))?;
    let mut reader = response.into_reader();
    let mut file =
        fs::File::create(partial).with_context(|| format!("cannot write {}", partial.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("download of {url} broke off after {total} bytes"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        total += n as u64;
    }
    file.sync_all()?;
    let got = format!("{:x}", hasher.finalize());
    if !got.eq_ignore_ascii_case(md5_hex) {
        bail!(
            "{url}: md5 {got} ({total} bytes) does not match the expected {md5_hex} (the official archive is \
             {CIFAR10_ARCHIVE_BYTES} bytes); refusing to unpack. Retry, or fetch the archive yourself and \
             unpack it into {}",
            dir.display()
        );
    }

    fs::create_dir_all(staging)?;
    let gz = flate2::read::GzDecoder::new(fs::File::open(partial)?);
    let mut archive = tar::Archive::new(gz);
    let mut unpacked = Vec::new();
    for entry in archive
        .entries()
        .context("the archive is not a tar.gz file")?
    {
        let mut entry = entry.context("the archive is damaged")?;
        let path = entry.path()?.into_owned();
        // Only a known file name directly under the archive's one folder: never a path from the archive.
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !MEMBERS.contains(&name) || !entry.header().entry_type().is_file() {
            continue;
        }
        let dest = staging.join(name);
        entry
            .unpack(&dest)
            .with_context(|| format!("cannot unpack {name}"))?;
        if name.ends_with(".bin") {
            read_records(&dest).with_context(|| format!("archive member {name} is not valid"))?;
        }
        unpacked.push(name.to_string());
    }
    if !unpacked.iter().any(|n| n == TEST_FILE)
        || !unpacked.iter().any(|n| n.starts_with("data_batch_"))
    {
        bail!("{url}: the archive holds no CIFAR-10 binary files");
    }
    for name in &unpacked {
        fs::rename(staging.join(name), dir.join(name))?;
    }
    tracing::info!(files = unpacked.len(), "CIFAR-10 unpacked");
    Ok(())
}

/// A learnable CIFAR-shaped set: each class has a random 4x4 colour pattern (upsampled to 32x32), and
/// each image is its class's pattern plus pixel noise. Same seed, same data.
pub fn synthetic(seed: u64, n_train: usize, n_test: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
    let prototypes: Vec<[u8; 48]> = (0..10)
        .map(|_| std::array::from_fn(|_| rng.gen_range(40..216)))
        .collect();
    let mut make = |n: usize| {
        let mut pixels = Vec::with_capacity(n * 3072);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % 10;
            labels.push(class as i64);
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let base = prototypes[class][c * 16 + (y / 8) * 4 + x / 8] as i32;
                        pixels.push((base + rng.gen_range(-48..=48)).clamp(0, 255) as u8);
                    }
                }
            }
        }
        Split {
            images: Tensor::from_slice(&pixels).reshape([n as i64, 3, 32, 32]),
            labels: Tensor::from_slice(&labels),
        }
    };
    let train = make(n_train);
    let test = make(n_test);
    let info = DataInfo {
        dataset: "synthetic".into(),
        train_available: n_train,
        test_available: n_test,
        train_used: n_train,
        test_used: n_test,
    };
    Dataset { train, test, info }
}

/// CIFAR-10 is not in a run's data directory and could not be downloaded into it: what this
/// machine lacks, said with what to do (the trainer exits with [`crate::EXIT_NO_DATA`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "no CIFAR-10 in {dir} and it cannot be downloaded ({why}): give the worker a --data-dir \
     holding data_batch_1..5.bin and test_batch.bin (`worker fetch-data --data-dir DIR` fetches \
     them), or make its --data-url reachable"
)]
pub struct Unavailable {
    pub dir: String,
    pub why: String,
}

/// Loads the dataset a run asks for, downloading CIFAR-10 when its directory is empty.
pub fn load(cfg: &crate::config::TrainConfig) -> Result<Dataset> {
    let ds = match cfg.dataset {
        crate::config::DatasetKind::Synthetic => synthetic(
            cfg.seed,
            cfg.limit_train.unwrap_or(5000),
            cfg.limit_test.unwrap_or(1000),
        ),
        crate::config::DatasetKind::Cifar10 => {
            if !has_cifar10(&cfg.data_dir) {
                download_cifar10(&cfg.data_dir, &cfg.data_url, &cfg.data_md5).map_err(|e| {
                    Unavailable {
                        dir: std::path::absolute(&cfg.data_dir)
                            .unwrap_or_else(|_| cfg.data_dir.clone())
                            .display()
                            .to_string(),
                        // One line: it ends a log line and a job's attempt.
                        why: format!("{e:#}")
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" "),
                    }
                })?;
            }
            load_cifar10(&cfg.data_dir, cfg.limit_train, cfg.limit_test)?
        }
    };
    if ds.train.is_empty() || ds.test.is_empty() {
        bail!("the dataset is empty (check --limit-train / --limit-test)");
    }
    debug_assert_eq!(ds.train.images.kind(), Kind::Uint8);
    Ok(ds)
}
