//! The markdown table of any sweep that is not the study's kind ([`crate::results::shape`]): a row
//! per job with its id, its axes, its status, the objective and every other metric some job
//! reported; numbers to 4 significant digits, fractions as percentages, strings as written; the
//! best completed value of each metric column in bold; a missing value blank.
use crate::results::shape::{short, value_cell, MetricColumn};
use protocol::views::JobRow;
use protocol::JobStatus;

/// Epochs at or above this mean "until the program stops" (a command's open-ended run).
const UNBOUNDED_EPOCHS: i64 = 100_000;

#[derive(Debug, Clone)]
pub struct Table {
    pub axes: Vec<String>,
    pub metrics: Vec<MetricColumn>,
    /// The objectives' names among `metrics` (their columns come first).
    pub objectives: Vec<String>,
    /// Several objectives: the front's jobs (a `pareto` column marks them).
    pub front: Option<std::collections::HashSet<i64>>,
    /// Population-based training: each exploited member's schedule (a `schedule` column).
    pub schedules: Option<std::collections::HashMap<i64, String>>,
    /// Epochs and wall-time columns.
    pub extra: bool,
}

impl Table {
    pub fn head(&self) -> String {
        let mut head: Vec<String> = vec!["job".into()];
        head.extend(self.axes.iter().map(|a| escape(a)));
        head.push("status".into());
        if self.front.is_some() {
            head.push("pareto".into());
        }
        if self.schedules.is_some() {
            head.push("schedule".into());
        }
        for m in &self.metrics {
            let mut h = escape(&m.header());
            if self.objectives.contains(&m.name) {
                h.push_str(&format!(" (objective, {})", m.mode.as_str()));
            }
            head.push(h);
        }
        if self.extra {
            head.extend(["epochs".into(), "wall time".into()]);
        }
        let rule: Vec<&str> = head
            .iter()
            .enumerate()
            .map(|(i, _)| match i <= self.axes.len() {
                true => "---",
                false => "---:",
            })
            .collect();
        format!("| {} |\n|{}|\n", head.join(" | "), rule.join("|"))
    }

    pub fn row(&self, j: &JobRow) -> String {
        let mut cells = vec![j.id.to_string()];
        cells.extend(
            self.axes
                .iter()
                .map(|a| escape(&j.params.get(a).map(value_cell).unwrap_or_default())),
        );
        cells.push(status_cell(j));
        if let Some(front) = &self.front {
            cells.push(if front.contains(&j.id) { "yes" } else { "" }.into());
        }
        if let Some(schedules) = &self.schedules {
            cells.push(escape(schedules.get(&j.id).map_or("", String::as_str)));
        }
        let latest = j.latest.as_ref();
        for m in &self.metrics {
            let v = latest
                .and_then(|r| r.get(&m.name))
                .filter(|v| v.is_finite());
            cells.push(metric_cell(m, v, j.status == JobStatus::Completed));
        }
        if self.extra {
            cells.push(match j.epochs >= UNBOUNDED_EPOCHS {
                true => j.epoch.to_string(),
                false => format!("{}/{}", j.epoch, j.epochs),
            });
            cells.push(match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => format_duration((f - s) as f64 / 1000.0),
                _ => String::new(),
            });
        }
        table_row(&cells)
    }
}

/// A job's status, with the epoch it is at (running) or stopped at (pruned).
fn status_cell(j: &JobRow) -> String {
    let at = match j.epochs >= UNBOUNDED_EPOCHS {
        true => j.epoch.to_string(),
        false => format!("{}/{}", j.epoch, j.epochs),
    };
    match j.status {
        JobStatus::Running if j.epoch > 0 => format!("running (epoch {at})"),
        JobStatus::Pruned => format!("pruned at epoch {}", j.epoch),
        s => s.to_string(),
    }
}

/// A metric's cell: blank without a finite value, a fraction as a percentage, bold when it is the
/// column's best among completed jobs.
fn metric_cell(m: &MetricColumn, v: Option<f64>, completed: bool) -> String {
    let Some(v) = v else {
        return String::new();
    };
    let text = match m.percent() {
        true => format!("{:.2}", 100.0 * v),
        false => short(v),
    };
    match completed && m.best == Some(v) {
        true => format!("**{text}**"),
        false => text,
    }
}

/// A cell's text in a markdown table: a `|` would split the cell, a newline the row.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// One markdown row; an empty cell is written `| |`, as the study writes the rows it left empty.
pub(crate) fn table_row(cells: &[String]) -> String {
    let mut row = String::from("|");
    for c in cells {
        if c.is_empty() {
            row.push_str(" |");
        } else {
            row.push_str(&format!(" {c} |"));
        }
    }
    row.push('\n');
    row
}

/// A wall time as the tables write it: `3m07s`, `2h05m`.
pub(crate) fn format_duration(secs: f64) -> String {
    let s = secs.round() as i64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
