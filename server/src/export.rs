//! Results in the study's format: a markdown table (lr descending, then batch size; the best row of
//! each lr in bold; diverged runs as NaN and /), CSV and JSON with every field, and the README block.
use serde_json::{Map, Value};

use crate::store::{JobRow, SweepDetail};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Markdown,
    Csv,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// Precision, recall, F1, epochs and wall-time columns.
    pub extra: bool,
    /// The study's Chinese headings.
    pub chinese: bool,
}

pub const BEGIN: &str = "<!-- results:begin -->";
pub const END: &str = "<!-- results:end -->";

/// The study's way of writing a learning rate: 1e-2, 5e-3, 1e-4.
pub fn format_lr(lr: f64) -> String {
    format!("{lr:e}")
}

pub(crate) fn param_f64(j: &JobRow, k: &str) -> Option<f64> {
    j.params.get(k).and_then(Value::as_f64)
}

/// The job's per-process batch size, when its params set one.
pub(crate) fn batch_size(j: &JobRow) -> Option<i64> {
    j.params.get("batch_size").and_then(Value::as_i64)
}

/// Grid keys other than lr and batch_size that vary across the sweep's jobs: extra columns.
fn other_axes(d: &SweepDetail) -> Vec<String> {
    let mut keys: Vec<String> = d
        .spec
        .get("grid")
        .and_then(Value::as_object)
        .map(|g| g.keys().cloned().collect())
        .unwrap_or_default();
    if d.spec
        .pointer("/run/repeats")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        > 1
        && !keys.iter().any(|k| k == "seed")
    {
        keys.push("seed".into());
    }
    keys.retain(|k| k != "lr" && k != "batch_size");
    keys
}

fn sorted_jobs(d: &SweepDetail) -> Vec<&JobRow> {
    let mut jobs: Vec<&JobRow> = d.jobs.iter().collect();
    // lr descending, then batch size ascending; grid order breaks ties.
    jobs.sort_by(|a, b| {
        let lr = |j: &JobRow| param_f64(j, "lr").unwrap_or(f64::NAN);
        let bs = |j: &JobRow| batch_size(j).unwrap_or(i64::MAX);
        lr(b).total_cmp(&lr(a)).then(bs(a).cmp(&bs(b)))
    });
    jobs
}

fn final_loss(j: &JobRow) -> Option<f64> {
    j.latest.as_ref().and_then(|m| m.test_loss)
}

pub(crate) fn final_acc(j: &JobRow) -> Option<f64> {
    j.latest.as_ref().and_then(|m| m.accuracy)
}

/// The best finished run of each lr: highest final accuracy, then lowest loss.
fn best_of_each_lr(jobs: &[&JobRow]) -> Vec<i64> {
    let mut best: Vec<(f64, &JobRow)> = vec![];
    for j in jobs.iter().filter(|j| j.status == "completed") {
        let (Some(lr), Some(acc)) = (param_f64(j, "lr"), final_acc(j)) else {
            continue;
        };
        match best.iter_mut().find(|(l, _)| *l == lr) {
            Some(slot) => {
                let (a0, l0) = (
                    final_acc(slot.1).unwrap_or(-1.0),
                    final_loss(slot.1).unwrap_or(f64::INFINITY),
                );
                if acc > a0 || (acc == a0 && final_loss(j).unwrap_or(f64::INFINITY) < l0) {
                    slot.1 = j;
                }
            }
            None => best.push((lr, j)),
        }
    }
    best.into_iter().map(|(_, j)| j.id).collect()
}

pub fn markdown(d: &SweepDetail, opts: &TableOptions) -> String {
    let jobs = sorted_jobs(d);
    let best = best_of_each_lr(&jobs);
    let axes = other_axes(d);
    let mut head: Vec<String> = if opts.chinese {
        vec!["初始学习率".into(), "batch_size".into()]
    } else {
        vec!["initial lr".into(), "batch_size".into()]
    };
    head.extend(axes.iter().cloned());
    if opts.chinese {
        head.extend(["最终Loss".into(), "最终准确率（%）".into()]);
    } else {
        head.extend(["final loss".into(), "final accuracy (%)".into()]);
    }
    if opts.extra {
        head.extend(
            [
                "precision (%)",
                "recall (%)",
                "F1 (%)",
                "epochs",
                "wall time",
            ]
            .map(String::from),
        );
    }
    let mut out = format!(
        "| {} |\n|{}\n",
        head.join(" | "),
        ":---:|".repeat(head.len())
    );
    let mut unfinished = false;
    for j in jobs {
        let mut cells = vec![
            param_f64(j, "lr")
                .map(format_lr)
                .unwrap_or_else(|| "?".into()),
            j.params
                .get("batch_size")
                .map(Value::to_string)
                .unwrap_or_else(|| "32".into()),
        ];
        cells.extend(
            axes.iter()
                .map(|k| j.params.get(k).map(Value::to_string).unwrap_or_default()),
        );
        let pct = |v: Option<f64>| {
            v.map(|x| format!("{:.2}", 100.0 * x))
                .unwrap_or_else(|| "/".into())
        };
        let (loss, acc) = match j.status.as_str() {
            "diverged" => ("NaN".to_string(), "/".to_string()),
            "completed" => {
                let l = final_loss(j)
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "NaN".into());
                let a = pct(final_acc(j));
                if best.contains(&j.id) {
                    (format!("**{l}**"), format!("**{a}**"))
                } else {
                    (l, a)
                }
            }
            "running" if j.latest.is_some() => {
                unfinished = true;
                let l = final_loss(j)
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "NaN".into());
                (
                    format!("{l}†"),
                    format!("{}† (epoch {}/{})", pct(final_acc(j)), j.epoch, j.epochs),
                )
            }
            other => {
                unfinished |= other == "running" || other == "pending";
                (other.to_string(), "/".to_string())
            }
        };
        cells.push(loss);
        cells.push(acc);
        if opts.extra {
            let m = j.latest.as_ref();
            cells.push(pct(m.and_then(|m| m.precision)));
            cells.push(pct(m.and_then(|m| m.recall)));
            cells.push(pct(m.and_then(|m| m.f1)));
            cells.push(format!("{}/{}", j.epoch, j.epochs));
            cells.push(match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => format_duration((f - s) as f64 / 1000.0),
                _ => "/".into(),
            });
        }
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    if unfinished {
        out.push_str("\n† unfinished: the latest recorded epoch's values.\n");
    }
    out
}

fn format_duration(secs: f64) -> String {
    let s = secs.round() as i64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// One flat record per job with every field.
pub fn records(d: &SweepDetail) -> Vec<Map<String, Value>> {
    sorted_jobs(d)
        .into_iter()
        .map(|j| {
            let mut r = Map::new();
            r.insert("job_id".into(), j.id.into());
            r.insert("status".into(), j.status.clone().into());
            r.insert("attempt".into(), j.attempt.into());
            r.insert("epoch".into(), j.epoch.into());
            r.insert("epochs".into(), j.epochs.into());
            for (k, v) in j.params.as_object().into_iter().flatten() {
                r.insert(k.clone(), v.clone());
            }
            let m = j.latest.as_ref();
            for (k, v) in [
                ("lr_last", m.and_then(|m| m.lr)),
                ("train_loss", m.and_then(|m| m.train_loss)),
                ("test_loss", m.and_then(|m| m.test_loss)),
                ("accuracy", m.and_then(|m| m.accuracy)),
                ("precision", m.and_then(|m| m.precision)),
                ("recall", m.and_then(|m| m.recall)),
                ("f1", m.and_then(|m| m.f1)),
                ("images_per_sec", m.and_then(|m| m.images_per_sec)),
            ] {
                r.insert(k.into(), v.map(Value::from).unwrap_or(Value::Null));
            }
            r.insert(
                "wall_seconds".into(),
                match (j.started_at, j.finished_at) {
                    (Some(s), Some(f)) => Value::from((f - s) as f64 / 1000.0),
                    _ => Value::Null,
                },
            );
            r.insert(
                "worker".into(),
                j.worker.clone().map(Value::from).unwrap_or(Value::Null),
            );
            r.insert(
                "error".into(),
                j.error.clone().map(Value::from).unwrap_or(Value::Null),
            );
            r
        })
        .collect()
}

pub fn csv(d: &SweepDetail) -> String {
    let recs = records(d);
    let mut cols: Vec<String> = vec![];
    for r in &recs {
        for k in r.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let cell = |v: Option<&Value>| -> String {
        let s = match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = cols.join(",") + "\n";
    for r in &recs {
        out.push_str(
            &cols
                .iter()
                .map(|c| cell(r.get(c)))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

pub fn render(d: &SweepDetail, format: Format, opts: &TableOptions) -> (&'static str, String) {
    match format {
        Format::Markdown => ("text/markdown; charset=utf-8", markdown(d, opts)),
        Format::Csv => ("text/csv; charset=utf-8", csv(d)),
        Format::Json => (
            "application/json",
            Value::Array(records(d).into_iter().map(Value::Object).collect()).to_string(),
        ),
    }
}

/// "Sweep `name` (id 3, 4 jobs): 5 epochs, device Cpu, finished 2026-11-28, commit abc123."
pub fn provenance(d: &SweepDetail) -> String {
    let summaries: Vec<&Value> = d.jobs.iter().filter_map(|j| j.summary.as_ref()).collect();
    let distinct = |key: &str| -> String {
        let mut v: Vec<String> = summaries
            .iter()
            .filter_map(|s| s.get(key))
            .map(|x| x.as_str().map(String::from).unwrap_or(x.to_string()))
            .collect();
        v.sort();
        v.dedup();
        if v.is_empty() {
            "unknown".into()
        } else {
            v.join(", ")
        }
    };
    let mut epochs: Vec<i64> = d.jobs.iter().map(|j| j.epochs).collect();
    epochs.sort();
    epochs.dedup();
    let epochs = epochs
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join("/");
    let last = d.jobs.iter().filter_map(|j| j.finished_at).max();
    let date = last
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
        .map(|t| format!("{}-{:02}-{:02}", t.year(), t.month() as u8, t.day()))
        .unwrap_or_else(|| "not finished".into());
    format!(
        "Sweep `{}` (id {}, {} jobs): {epochs} epochs, device {}, finished {date}, commit {}.",
        d.sweep.name,
        d.sweep.id,
        d.jobs.len(),
        distinct("device"),
        distinct("git_commit")
    )
}

/// Replaces what lies between the results markers (exclusive) with `block`; the same input gives the
/// same output, so running it twice changes nothing.
pub fn rewrite_block(readme: &str, block: &str) -> Result<String, String> {
    let start = readme
        .find(BEGIN)
        .ok_or_else(|| format!("no {BEGIN} marker"))?;
    let end = readme[start..]
        .find(END)
        .map(|i| i + start)
        .ok_or_else(|| format!("no {END} marker after {BEGIN}"))?;
    Ok(format!(
        "{}{BEGIN}\n{}\n{}",
        &readme[..start],
        block.trim_end(),
        &readme[end..]
    ))
}
