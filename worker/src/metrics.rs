//! Classification metrics as scikit-learn computes them (`average="macro"`, `zero_division=0`).
use serde::{Deserialize, Serialize};

/// `counts[true][pred]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![vec![0; classes]; classes],
        }
    }

    pub fn add(&mut self, truth: &[i64], pred: &[i64]) {
        for (&t, &p) in truth.iter().zip(pred) {
            self.counts[t as usize][p as usize] += 1;
        }
    }

    /// Macro scores over the labels that occur in the truth or the predictions (scikit-learn's
    /// `unique_labels`); a label with no predicted (or no true) samples scores 0 precision (recall).
    pub fn scores(&self) -> Scores {
        let k = self.classes;
        let total: u64 = self.counts.iter().flatten().sum();
        let correct: u64 = (0..k).map(|i| self.counts[i][i]).sum();
        let (mut p_sum, mut r_sum, mut f_sum, mut labels) = (0.0, 0.0, 0.0, 0usize);
        for c in 0..k {
            let tp = self.counts[c][c] as f64;
            let support: u64 = self.counts[c].iter().sum();
            let predicted: u64 = (0..k).map(|t| self.counts[t][c]).sum();
            if support == 0 && predicted == 0 {
                continue;
            }
            labels += 1;
            let p = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let r = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f = if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            };
            p_sum += p;
            r_sum += r;
            f_sum += f;
        }
        let mean = |s: f64| if labels == 0 { 0.0 } else { s / labels as f64 };
        Scores {
            accuracy: if total == 0 {
                0.0
            } else {
                correct as f64 / total as f64
            },
            precision: mean(p_sum),
            recall: mean(r_sum),
            f1: mean(f_sum),
        }
    }
}

/// One evaluated epoch, as written to `metrics.jsonl` and sent to the coordinator. Fractions, not
/// percent. Non-finite numbers (a diverged run) are written as JSON `null` and read back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub lr: f64,
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    #[serde(with = "nan_as_null")]
    pub test_loss: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub images_per_sec: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    /// Bitwise equality, NaN included: what "the same metrics, bit for bit" means.
    pub fn bits_eq_ignoring_time(&self, other: &Self) -> bool {
        let b = |x: f64| x.to_bits();
        self.epoch == other.epoch
            && b(self.lr) == b(other.lr)
            && b(self.train_loss) == b(other.train_loss)
            && b(self.test_loss) == b(other.test_loss)
            && b(self.accuracy) == b(other.accuracy)
            && b(self.precision) == b(other.precision)
            && b(self.recall) == b(other.recall)
            && b(self.f1) == b(other.f1)
    }
}

pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
