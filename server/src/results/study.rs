//! The study's table as its specification gives it (SEED.md: the first README, 300 epochs, gamma 0.1,
//! batch size per GPU on 2 GPUs), and our sweep's results beside it, cell by cell. The numbers here
//! are the document's, typed once; every number of ours comes from the database.
use std::collections::HashMap;

use crate::results::export::{self, format_lr, job_batch, job_lr, pct};
use crate::store::JobKey;
use protocol::JobStatus;

/// The study's schedule: its table's numbers are those of epoch 300.
pub const STUDY_EPOCHS: i64 = 300;

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

/// Our result in one cell, over its finished runs (completed or diverged; seeds, repeats and other
/// axes fold into one cell per (batch size, lr)): how many diverged, and the means over the runs that
/// did not, so a cell where 1 seed of 3 diverged still shows what the other two reached.
#[derive(Debug, Clone, PartialEq)]
struct Ours {
    runs: usize,
    diverged: usize,
    /// Mean final loss of the runs that did not diverge.
    loss: Option<f64>,
    /// A fraction: the mean over the runs that did not diverge; when every run diverged, the mean
    /// accuracy of the diverged weights (the study's 10.00%).
    accuracy: Option<f64>,
}

impl Ours {
    fn all_diverged(&self) -> bool {
        self.diverged == self.runs
    }

    /// "3/3 NaN", "1/3 NaN", "0/3": beside the study's NaN or accuracy, the boundary at a glance.
    fn diverged_cell(&self) -> String {
        if self.diverged > 0 {
            format!("{}/{} NaN", self.diverged, self.runs)
        } else {
            format!("0/{}", self.runs)
        }
    }
}

fn ours(jobs: &[&JobKey]) -> Option<Ours> {
    let (diverged, trained): (Vec<&JobKey>, Vec<&JobKey>) = jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Completed | JobStatus::Diverged))
        .partition(|j| j.status == JobStatus::Diverged);
    let runs = diverged.len() + trained.len();
    if runs == 0 {
        return None;
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let accuracy_of = |js: &[&JobKey]| mean(js.iter().filter_map(|j| j.accuracy).collect());
    let accuracy = if trained.is_empty() {
        accuracy_of(&diverged)
    } else {
        accuracy_of(&trained)
    };
    Some(Ours {
        runs,
        diverged: diverged.len(),
        loss: mean(trained.iter().filter_map(|j| j.test_loss).collect()),
        accuracy,
    })
}

/// The study's (loss, accuracy) cells as the document prints them, the accuracy as a number, and
/// whether the study's run diverged.
fn study_cells(batch: i64, lr: f64) -> (String, String, Option<(f64, bool)>) {
    let study = FIRST_README
        .iter()
        .find(|r| r.batch_size == batch && r.lr == lr)
        .map(|r| r.result);
    match study {
        Some(Final { loss, accuracy }) => (
            format!("{loss:.3}"),
            format!("{accuracy:.2}"),
            Some((accuracy, false)),
        ),
        Some(Diverged { accuracy }) => (
            "NaN".into(),
            format!("{accuracy:.2}"),
            Some((accuracy, true)),
        ),
        Some(Empty) | None => (String::new(), String::new(), None),
    }
}

/// Our (diverged, loss, accuracy) cells; the bool says whether a cell folded several runs.
fn our_cells(o: Option<&Ours>) -> ([String; 3], bool) {
    let Some(o) = o else {
        return (Default::default(), false);
    };
    let loss = if o.all_diverged() {
        "NaN".to_string()
    } else {
        o.loss.map(|l| format!("{l:.3}")).unwrap_or_default()
    };
    let mut acc = pct(o.accuracy);
    let averaged = if o.all_diverged() {
        o.runs
    } else {
        o.runs - o.diverged
    };
    if averaged > 1 {
        acc.push_str(&format!(" (mean of {averaged})"));
    }
    ([o.diverged_cell(), loss, acc], o.runs > 1)
}

/// Our accuracy minus the study's, where both ended the same way: the study's run diverged and all of
/// ours did, or it trained and some of ours did (then ours is their mean). A trained accuracy minus a
/// diverged run's 10.00 says nothing the diverged column does not.
fn difference(study: Option<(f64, bool)>, o: Option<&Ours>) -> String {
    match (study, o) {
        (Some((s, s_diverged)), Some(o)) if s_diverged == o.all_diverged() => o
            .accuracy
            .map(|a| format!("{:+.2}", 100.0 * a - s))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The comparison as a markdown table: every cell of the study's table and of the sweep, batch size
/// ascending then lr descending, the study's numbers as the document prints them, ours (with how
/// many runs diverged), and our accuracy minus the study's in points.
pub fn compare(jobs: &[JobKey]) -> String {
    // Every cell's runs, grouped once (a random search may give each of 100,000 jobs its own lr),
    // the study's cells included when the sweep has no run there.
    let mut cells: HashMap<(i64, u64), Vec<&JobKey>> = FIRST_README
        .iter()
        .map(|r| ((r.batch_size, r.lr.to_bits()), vec![]))
        .collect();
    for j in jobs {
        cells
            .entry((job_batch(j), job_lr(j).to_bits()))
            .or_default()
            .push(j);
    }
    let mut cells: Vec<((i64, f64), Vec<&JobKey>)> = cells
        .into_iter()
        .map(|((batch, lr), runs)| ((batch, f64::from_bits(lr)), runs))
        .collect();
    cells.sort_by(|a, b| export::study_order(a.0, b.0));
    let mut out = String::from(
        "| batch_size | initial lr | study: final loss | study: final accuracy (%) | ours: diverged | ours: final loss | ours: final accuracy (%) | difference (points) |\n\
         |:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|\n",
    );
    let mut folded = false;
    for ((batch, lr), cell) in cells {
        let (s_loss, s_acc, s_value) = study_cells(batch, lr);
        let o = ours(&cell);
        let ([o_div, o_loss, o_acc], several) = our_cells(o.as_ref());
        folded |= several;
        out.push_str(&crate::results::table::table_row(&[
            batch.to_string(),
            format_lr(lr),
            s_loss,
            s_acc,
            o_div,
            o_loss,
            o_acc,
            difference(s_value, o.as_ref()),
        ]));
    }
    out.push_str(
        "\nStudy: its first README's table (SEED.md), empty where the study left it empty; a diverged run \
         reads NaN beside the accuracy of its diverged weights. Ours: the sweep's finished runs; diverged: \
         how many of a cell's runs ended with a non-finite loss. Difference: our accuracy minus the study's \
         where both ended the same way (trained, or diverged); differences under about 0.3 points are \
         noise (SEED.md).\n",
    );
    if folded {
        out.push_str(
            "A cell with several runs (seeds, repeats or other axes) shows the mean loss and accuracy of \
             its runs that did not diverge (of all its runs when every one diverged).\n",
        );
    }
    out
}
