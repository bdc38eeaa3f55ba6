//! The study's table as its specification gives it (SEED.md: the first README, 300 epochs, gamma 0.1,
//! batch size per GPU on 2 GPUs), and our sweep's results beside it, cell by cell. The numbers here
//! are the document's, typed once; every number of ours comes from the database.
use crate::export::{self, format_lr, job_batch, job_lr, pct};
use crate::views::{JobRow, SweepDetail};
use protocol::JobStatus;

/// What the study printed for one (batch size, lr) cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StudyResult {
    /// Final test loss and accuracy (%).
    Final { loss: f64, accuracy: f64 },
    /// "Gradient explosion": loss `NaN`, and the accuracy (%) of the diverged weights.
    Diverged { accuracy: f64 },
    /// A row the study listed with empty cells.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StudyRow {
    pub batch_size: i64,
    pub lr: f64,
    pub result: StudyResult,
}

const fn row(batch_size: i64, lr: f64, result: StudyResult) -> StudyRow {
    StudyRow {
        batch_size,
        lr,
        result,
    }
}

use StudyResult::{Diverged, Empty, Final};

/// The first README's 12 rows, in its order.
pub const FIRST_README: [StudyRow; 12] = [
    row(1, 1e-2, Diverged { accuracy: 10.0 }),
    row(
        1,
        1e-4,
        Final {
            loss: 0.332,
            accuracy: 89.53,
        },
    ),
    row(4, 1e-2, Diverged { accuracy: 10.0 }),
    row(4, 1e-4, Empty),
    row(8, 1e-2, Diverged { accuracy: 10.0 }),
    row(8, 1e-4, Empty),
    row(
        16,
        1e-2,
        Final {
            loss: 0.200,
            accuracy: 94.52,
        },
    ),
    row(
        32,
        1e-2,
        Final {
            loss: 0.234,
            accuracy: 94.04,
        },
    ),
    row(
        64,
        1e-2,
        Final {
            loss: 0.269,
            accuracy: 92.53,
        },
    ),
    row(
        128,
        1e-2,
        Final {
            loss: 0.316,
            accuracy: 90.88,
        },
    ),
    row(
        256,
        1e-2,
        Final {
            loss: 0.367,
            accuracy: 88.80,
        },
    ),
    row(
        512,
        1e-2,
        Final {
            loss: 0.423,
            accuracy: 85.74,
        },
    ),
];

/// Our result in one cell: the mean over the cell's finished runs (completed or diverged), so
/// repeats and other axes fold into one number per (batch size, lr).
#[derive(Debug, Clone, PartialEq)]
struct Ours {
    /// None when a run diverged (its loss is NaN) or none reported a loss.
    loss: Option<f64>,
    /// Percent.
    accuracy: Option<f64>,
    runs: usize,
    diverged: usize,
}

fn ours(jobs: &[&JobRow]) -> Option<Ours> {
    let done: Vec<&&JobRow> = jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Completed | JobStatus::Diverged))
        .collect();
    if done.is_empty() {
        return None;
    }
    let diverged = done
        .iter()
        .filter(|j| j.status == JobStatus::Diverged)
        .count();
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let accs: Vec<f64> = done.iter().filter_map(|j| export::final_acc(j)).collect();
    let losses: Vec<f64> = done
        .iter()
        .filter_map(|j| j.latest.as_ref().and_then(|m| m.test_loss))
        .collect();
    Some(Ours {
        loss: if diverged > 0 { None } else { mean(losses) },
        accuracy: mean(accs).map(|a| 100.0 * a),
        runs: done.len(),
        diverged,
    })
}

/// The comparison as a markdown table: every cell of the study's table and of the sweep, batch size
/// ascending then lr descending, the study's numbers as the document prints them, ours, and our
/// accuracy minus the study's in points.
pub fn compare(d: &SweepDetail) -> String {
    let mut keys: Vec<(i64, f64)> = FIRST_README.iter().map(|r| (r.batch_size, r.lr)).collect();
    for j in &d.jobs {
        let k = (job_batch(j), job_lr(j));
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut out = String::from(
        "| batch_size | initial lr | study: final loss | study: final accuracy (%) | ours: final loss | ours: final accuracy (%) | difference (points) |\n\
         |:---:|:---:|:---:|:---:|:---:|:---:|:---:|\n",
    );
    let mut folded = false;
    for (batch, lr) in keys {
        let study = FIRST_README
            .iter()
            .find(|r| r.batch_size == batch && r.lr == lr)
            .map(|r| r.result);
        let (s_loss, s_acc, s_value) = match study {
            Some(Final { loss, accuracy }) => (
                format!("{loss:.3}"),
                format!("{accuracy:.2}"),
                Some(accuracy),
            ),
            Some(Diverged { accuracy }) => ("NaN".into(), format!("{accuracy:.2}"), Some(accuracy)),
            Some(Empty) | None => (String::new(), String::new(), None),
        };
        let cell: Vec<&JobRow> = d
            .jobs
            .iter()
            .filter(|j| job_batch(j) == batch && job_lr(j) == lr)
            .collect();
        let o = ours(&cell);
        let (o_loss, mut o_acc) = match &o {
            Some(o) if o.diverged > 0 => ("NaN".to_string(), pct(o.accuracy.map(|a| a / 100.0))),
            Some(o) => (
                o.loss.map(|l| format!("{l:.3}")).unwrap_or_default(),
                pct(o.accuracy.map(|a| a / 100.0)),
            ),
            None => (String::new(), String::new()),
        };
        if let Some(o) = o.as_ref().filter(|o| o.runs > 1) {
            folded = true;
            o_acc.push_str(&format!(" (mean of {})", o.runs));
        }
        let diff = match (s_value, o.as_ref().and_then(|o| o.accuracy)) {
            (Some(s), Some(a)) => format!("{:+.2}", a - s),
            _ => String::new(),
        };
        out.push_str(&export::table_row(&[
            batch.to_string(),
            format_lr(lr),
            s_loss,
            s_acc,
            o_loss,
            o_acc,
            diff,
        ]));
    }
    out.push_str(
        "\nStudy: its first README's table (SEED.md), empty where the study left it empty; a diverged run \
         reads NaN beside the accuracy of its diverged weights. Ours: the sweep's finished runs. Difference: \
         our accuracy minus the study's; differences under about 0.3 points are noise (SEED.md).\n",
    );
    if folded {
        out.push_str("A cell with several runs (repeats or other axes) shows their mean.\n");
    }
    out
}
