//! A sweep's results: for the study's kind of sweep, a markdown table laid out as the study's first
//! README lays it out (batch size ascending, then lr descending; the best row of each lr in bold; a
//! diverged run's loss `NaN` beside the accuracy of its diverged weights; empty cells where nothing
//! was reported); for any other, the table of its own axes and metrics ([`crate::results::table`]);
//! CSV and JSON with every field; and the README block. A search's rows come best first by its
//! objective.
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::results::shape::{self, MetricFacts};
use crate::results::table::{format_duration, table_row, Table};
use crate::store::{JobKey, SweepKeys};
use crate::sweep::early_stop::Mode;
use protocol::views::{JobRow, SweepDetail, SweepRow, TpeProgress};
use protocol::{JobStatus, MetricsReport};

/// The formats results come in: the one list, for the API's `?format=`, its schema and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Format {
    Markdown,
    Csv,
    Json,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Markdown, Format::Csv, Format::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    /// The HTTP content type of results in this format (the comparison is markdown too).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// As `?format=` and `--format` name it.
impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "md" => Ok(Format::Markdown),
            _ => Format::ALL
                .into_iter()
                .find(|f| f.as_str() == s)
                .ok_or_else(|| format!("unknown format {s:?} (markdown, csv, json)")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// Precision, recall, F1, epochs and wall-time columns.
    pub extra: bool,
    /// The study's Chinese headings.
    pub chinese: bool,
    /// The study's table beside ours, cell by cell ([`crate::results::study::compare`]).
    pub compare: bool,
}

pub const BEGIN: &str = "<!-- results:begin -->";
pub const END: &str = "<!-- results:end -->";

/// The study's way of writing a learning rate: 1e-2, 5e-3, 1e-4.
pub fn format_lr(lr: f64) -> String {
    format!("{lr:e}")
}

/// Grid keys other than lr and batch_size that vary across the sweep's jobs: extra columns.
fn other_axes(spec: &Value) -> Vec<String> {
    let mut keys = shape::axes(spec);
    keys.retain(|k| k != "lr" && k != "batch_size");
    keys
}

/// The job's lr, the trainer's default when the sweep leaves it unset.
pub(crate) fn job_lr(j: &JobKey) -> f64 {
    j.lr.unwrap_or(crate::sweep::DEFAULT_LR)
}

/// The job's per-process batch size, the trainer's default when the sweep leaves it unset.
pub(crate) fn job_batch(j: &JobKey) -> i64 {
    j.batch_size.unwrap_or(crate::sweep::DEFAULT_BATCH_SIZE)
}

/// The jobs whose points are known (a TPE trial still to be drawn has none), in the study's order:
/// batch size ascending, then lr descending; grid order breaks ties.
fn sorted_jobs(keys: &[JobKey]) -> Vec<&JobKey> {
    let mut jobs: Vec<&JobKey> = keys.iter().filter(|j| j.drawn_at.is_some()).collect();
    jobs.sort_by(|a, b| study_order((job_batch(a), job_lr(a)), (job_batch(b), job_lr(b))));
    jobs
}

/// The study's order of (batch size, lr) cells: batch size ascending, then lr descending.
pub(crate) fn study_order(a: (i64, f64), b: (i64, f64)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then(b.1.total_cmp(&a.1))
}

/// A TPE sweep's trials in the order they were drawn.
fn trials_in_order(keys: &[JobKey]) -> Vec<&JobKey> {
    let mut jobs: Vec<&JobKey> = keys.iter().filter(|j| j.drawn_at.is_some()).collect();
    jobs.sort_by_key(|j| (j.drawn_at, j.id));
    jobs
}

/// The metric a sweep is judged by, and which way is better: its objective (a TPE search's, else
/// its early-stopping rule's, else accuracy). What its keys are read with
/// ([`crate::store::KeyParts::metrics`]).
pub fn objective_of(spec: &Value) -> (String, Mode) {
    match crate::sweep::SweepSpec::from_value(spec) {
        Ok(parsed) => crate::results::importance::objective(&parsed),
        Err(_) => ("accuracy".into(), Mode::Max),
    }
}

/// Every objective of a sweep's search (several, or its one), else [`objective_of`]'s.
pub fn objectives_of(spec: &Value) -> Vec<(String, Mode)> {
    let several = crate::sweep::SweepSpec::from_value(spec)
        .ok()
        .and_then(|s| s.search)
        .map(|s| s.objectives)
        .unwrap_or_default();
    match several.is_empty() {
        true => vec![objective_of(spec)],
        false => several,
    }
}

/// The objective a sweep's rows are ranked by, where some job reported it.
fn objective(spec: &Value, facts: &MetricFacts) -> Option<(String, Mode)> {
    let (metric, mode) = objective_of(spec);
    facts.reported(&metric).then_some((metric, mode))
}

/// A search's jobs best first: completed ones with a finite value of the objective, by it; then
/// the others (running, pruned, diverged, failed, without a value) in the order drawn.
fn best_first(drawn: Vec<&JobKey>, mode: Mode) -> Vec<&JobKey> {
    let value = |j: &JobKey| {
        j.objective
            .filter(|v| j.status == JobStatus::Completed && v.is_finite())
    };
    let (mut ranked, rest): (Vec<&JobKey>, Vec<&JobKey>) =
        drawn.into_iter().partition(|j| value(j).is_some());
    // Stable: equal values keep the order drawn.
    ranked.sort_by(|a, b| {
        shape::best_first(
            mode,
            value(a).unwrap_or_default(),
            value(b).unwrap_or_default(),
        )
    });
    ranked.extend(rest);
    ranked
}

/// The named metrics (but the epoch's seconds) some job reported at its last epoch: the CSV's and
/// JSON's metric fields.
fn reported_named(facts: &MetricFacts) -> Vec<&'static str> {
    protocol::NAMED_METRICS
        .iter()
        .map(|m| m.name)
        .filter(|n| *n != "seconds" && facts.reported(n))
        .collect()
}

pub(crate) fn final_loss(j: &JobRow) -> Option<f64> {
    j.latest.as_ref().and_then(|m| m.test_loss)
}

pub(crate) fn final_acc(j: &JobRow) -> Option<f64> {
    j.latest.as_ref().and_then(|m| m.accuracy)
}

/// The best completed run of each lr (highest final accuracy, then lowest loss), where that lr has
/// at least two completed runs to compare: a lone result is not "best" of anything, which is how the
/// study's table leaves its single lr 1e-4 row plain while it bolds batch 16 at lr 1e-2.
fn best_of_each_lr(jobs: &[&JobKey]) -> HashSet<i64> {
    // (lr, best job, completed runs at that lr)
    let mut best: Vec<(f64, &JobKey, usize)> = vec![];
    for j in jobs.iter().filter(|j| j.status == JobStatus::Completed) {
        let Some(acc) = j.accuracy else {
            continue;
        };
        let lr = job_lr(j);
        match best.iter_mut().find(|(l, _, _)| *l == lr) {
            Some(slot) => {
                slot.2 += 1;
                let (a0, l0) = (
                    slot.1.accuracy.unwrap_or(-1.0),
                    slot.1.test_loss.unwrap_or(f64::INFINITY),
                );
                if acc > a0 || (acc == a0 && j.test_loss.unwrap_or(f64::INFINITY) < l0) {
                    slot.1 = j;
                }
            }
            None => best.push((lr, j, 1)),
        }
    }
    best.into_iter()
        .filter(|(_, _, n)| *n >= 2)
        .map(|(_, j, _)| j.id)
        .collect()
}

/// A fraction as the study prints a percentage: two decimals.
pub(crate) fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}", 100.0 * x)).unwrap_or_default()
}

/// The (loss, accuracy) cells of one job in the study's layout. Diverged runs read `NaN` beside the
/// accuracy their diverged weights scored (the study's 10.00); a run that reported nothing has empty
/// cells, as the study left the runs it did not report; a running one shows its latest epoch,
/// marked †, and one stopped early by the sweep's rule its last epoch, marked ‡. The third value is
/// the mark used, if any.
fn result_cells(j: &JobRow, bold: bool) -> (String, String, Option<char>) {
    let loss = || {
        final_loss(j)
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "NaN".into())
    };
    match j.status {
        JobStatus::Diverged => ("NaN".into(), pct(final_acc(j)), None),
        JobStatus::Completed if bold => (
            format!("**{}**", loss()),
            format!("**{}**", pct(final_acc(j))),
            None,
        ),
        JobStatus::Completed => (loss(), pct(final_acc(j)), None),
        JobStatus::Running | JobStatus::Pruned if j.latest.is_some() => {
            let (mark, what) = if j.status == JobStatus::Running {
                ('†', "epoch")
            } else {
                ('‡', "pruned at epoch")
            };
            (
                format!("{}{mark}", loss()),
                format!(
                    "{}{mark} ({what} {}/{})",
                    pct(final_acc(j)),
                    j.epoch,
                    j.epochs
                ),
                Some(mark),
            )
        }
        _ => (String::new(), String::new(), None),
    }
}

/// An export planned from a sweep's keys: the order of its rows, the bold ones, its columns. The
/// rows themselves are rendered a page at a time ([`Export::rows`]) as the caller fetches them, so a
/// 100,000-job sweep is never held whole, neither as rows nor as text.
#[derive(Debug)]
pub struct Export {
    format: Format,
    opts: TableOptions,
    /// The job ids in the order their rows are written.
    pub order: Vec<i64>,
    /// The study's table: the best run of each lr, bold.
    best: HashSet<i64>,
    /// The study's table: the grid's other keys, as columns.
    axes: Vec<String>,
    /// Any other sweep's markdown table.
    table: Option<Table>,
    /// CSV: every field any row has, in the order they first appear.
    columns: Vec<String>,
    /// CSV and JSON: the named metrics some job reported (the others get no column).
    reported: Vec<&'static str>,
    tpe: Option<TpeProgress>,
    /// Several objectives: the front's jobs.
    front: Option<HashSet<i64>>,
    /// Population-based training: each exploited member's schedule.
    schedules: Option<HashMap<i64, String>>,
    /// A TPE sweep's trial numbers (the order drawn), by job id.
    trials: HashMap<i64, usize>,
    written: usize,
    marks: BTreeSet<char>,
}

impl Export {
    pub fn plan(
        sweep: &SweepRow,
        spec: &Value,
        keys: &SweepKeys,
        format: Format,
        opts: &TableOptions,
    ) -> Export {
        let tpe = sweep.tpe.clone().filter(|_| format != Format::Markdown);
        let drawn = trials_in_order(&keys.jobs);
        let trials = drawn.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
        let study = shape::is_study_grid(spec);
        let objective = objective(spec, &keys.facts);
        let objective = objective.as_ref().map(|(m, mode)| (m.as_str(), *mode));
        let ordered = match (study, spec.get("search").is_some(), objective) {
            (true, _, _) => sorted_jobs(&keys.jobs),
            (false, true, Some((_, mode))) => best_first(drawn, mode),
            (false, true, None) => drawn,
            // A grid of other keys: in grid order.
            (false, false, _) => keys.jobs.iter().filter(|j| j.drawn_at.is_some()).collect(),
        };
        let best = match format == Format::Markdown && study {
            true => best_of_each_lr(&ordered),
            false => HashSet::new(),
        };
        let objectives: Vec<(String, Mode)> = objectives_of(spec)
            .into_iter()
            .filter(|(m, _)| keys.facts.reported(m))
            .collect();
        let judged: Vec<(&str, Mode)> = objectives.iter().map(|(m, o)| (m.as_str(), *o)).collect();
        let table = (format == Format::Markdown && !study).then(|| Table {
            axes: shape::axes(spec),
            metrics: shape::metric_columns(&keys.facts, &judged, opts.extra),
            objectives: objectives.iter().map(|o| o.0.clone()).collect(),
            front: None,
            schedules: None,
            extra: opts.extra,
        });
        let reported = reported_named(&keys.facts);
        let columns = match format {
            Format::Csv => csv_columns(&ordered, keys, tpe.as_ref(), &reported),
            _ => vec![],
        };
        Export {
            format,
            opts: opts.clone(),
            order: ordered.iter().map(|j| j.id).collect(),
            best,
            axes: other_axes(spec),
            table,
            columns,
            reported,
            tpe,
            trials,
            front: None,
            schedules: None,
            written: 0,
            marks: BTreeSet::new(),
        }
    }

    /// Several objectives: the front's rows first (each part keeps its order) and a `pareto`
    /// column (markdown: `yes` on the front; CSV and JSON: true or false).
    pub fn with_front(mut self, front: HashSet<i64>) -> Export {
        let (on, off): (Vec<i64>, Vec<i64>) = self.order.iter().partition(|id| front.contains(id));
        self.order = on.into_iter().chain(off).collect();
        if let Some(t) = &mut self.table {
            t.front = Some(front.clone());
        }
        if self.format == Format::Csv {
            let at = self
                .columns
                .iter()
                .position(|c| c == "status")
                .map_or(0, |i| i + 1);
            self.columns.insert(at, "pareto".into());
        }
        self.front = Some(front);
        self
    }

    /// Population-based training: a `schedule` column after the status (markdown and CSV: the
    /// member's values from each epoch on, its donors named; empty for a member that never
    /// copied one; JSON: a `schedule` field).
    pub fn with_schedules(mut self, schedules: HashMap<i64, String>) -> Export {
        if let Some(t) = &mut self.table {
            t.schedules = Some(schedules.clone());
        }
        if self.format == Format::Csv {
            let at = self
                .columns
                .iter()
                .position(|c| c == "status")
                .map_or(0, |i| i + 1);
            self.columns.insert(at, "schedule".into());
        }
        self.schedules = Some(schedules);
        self
    }

    pub fn content_type(&self) -> &'static str {
        self.format.content_type()
    }

    /// What comes before the first row: the table's head, the CSV's header, JSON's `[`.
    pub fn head(&self) -> String {
        match self.format {
            Format::Markdown => match &self.table {
                Some(t) => t.head(),
                None => markdown_head(&self.axes, &self.opts),
            },
            Format::Csv => self.columns.join(",") + "\n",
            Format::Json => "[".into(),
        }
    }

    /// The rows of the next jobs of [`Export::order`], given in that order.
    pub fn rows(&mut self, jobs: &[JobRow]) -> String {
        let mut out = String::new();
        for j in jobs {
            let trial = self.trials.get(&j.id).copied().unwrap_or_default();
            match self.format {
                Format::Markdown => match &self.table {
                    Some(t) => out.push_str(&t.row(j)),
                    None => {
                        let bold = self.best.contains(&j.id);
                        let (row, mark) = markdown_row(j, &self.axes, &self.opts, bold);
                        self.marks.extend(mark);
                        out.push_str(&row);
                    }
                },
                Format::Csv => {
                    let r = self.record(j, trial);
                    out.push_str(&csv_row(&r, &self.columns));
                }
                Format::Json => {
                    if self.written > 0 {
                        out.push(',');
                    }
                    let r = self.record(j, trial);
                    out.push_str(&Value::Object(r).to_string());
                }
            }
            self.written += 1;
        }
        out
    }

    /// A job's CSV and JSON record, marked on the front or not when the sweep has one.
    fn record(&self, j: &JobRow, trial: usize) -> Map<String, Value> {
        let mut r = record(j, self.tpe.as_ref(), trial, &self.reported);
        if let Some(front) = &self.front {
            r.insert("pareto".into(), front.contains(&j.id).into());
        }
        if let Some(schedules) = &self.schedules {
            let s = schedules.get(&j.id).cloned().unwrap_or_default();
            r.insert("schedule".into(), s.into());
        }
        r
    }

    /// What comes after the last row: the table's notes on its marks, JSON's `]`.
    pub fn tail(&self) -> String {
        match self.format {
            Format::Markdown => markdown_notes(&self.marks),
            Format::Csv => String::new(),
            Format::Json => "]".into(),
        }
    }
}

fn markdown_head(axes: &[String], opts: &TableOptions) -> String {
    let mut head: Vec<String> = if opts.chinese {
        vec!["batch_size".into(), "初始学习率".into()]
    } else {
        vec!["batch_size".into(), "initial lr".into()]
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
                "status",
                "epochs",
                "wall time",
            ]
            .map(String::from),
        );
    }
    format!(
        "| {} |\n|{}\n",
        head.join(" | "),
        ":---:|".repeat(head.len())
    )
}

/// One job's markdown row, and the mark its cells carry, if any.
fn markdown_row(
    j: &JobRow,
    axes: &[String],
    opts: &TableOptions,
    bold: bool,
) -> (String, Option<char>) {
    let k = &JobKey::of(j, 0, None);
    let mut cells = vec![job_batch(k).to_string(), format_lr(job_lr(k))];
    cells.extend(
        axes.iter()
            .map(|a| j.params.get(a).map(Value::to_string).unwrap_or_default()),
    );
    let (loss, acc, mark) = result_cells(j, bold);
    cells.push(loss);
    cells.push(acc);
    if opts.extra {
        let m = j.latest.as_ref();
        cells.push(pct(m.and_then(|m| m.precision)));
        cells.push(pct(m.and_then(|m| m.recall)));
        cells.push(pct(m.and_then(|m| m.f1)));
        cells.push(j.status.to_string());
        cells.push(format!("{}/{}", j.epoch, j.epochs));
        cells.push(match (j.started_at, j.finished_at) {
            (Some(s), Some(f)) => format_duration((f - s) as f64 / 1000.0),
            _ => String::new(),
        });
    }
    (table_row(&cells), mark)
}

fn markdown_notes(marks: &BTreeSet<char>) -> String {
    let mut out = String::new();
    if !marks.is_empty() {
        out.push('\n');
    }
    for mark in marks {
        out.push_str(match mark {
            '†' => "† unfinished: the latest recorded epoch's values.\n",
            _ => "‡ stopped early by the sweep's early-stopping rule: its last epoch's values.\n",
        });
    }
    out
}

/// One flat record per job with every field. A TPE sweep's lead with the trial number (`trial`: the
/// order it was drawn in), its objective (the search's metric at the last epoch) and whether it is
/// the best so far.
fn record(
    j: &JobRow,
    tpe: Option<&TpeProgress>,
    trial: usize,
    reported: &[&str],
) -> Map<String, Value> {
    let mut r = Map::new();
    if let Some(t) = tpe {
        let objective = j.latest.as_ref().and_then(|m| m.get(&t.metric));
        r.insert("trial".into(), trial.into());
        r.insert(
            "objective".into(),
            objective
                .filter(|v| v.is_finite())
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
        r.insert("best".into(), (t.best_job == Some(j.id)).into());
    }
    r.insert("job_id".into(), j.id.into());
    r.insert("status".into(), j.status.as_str().into());
    r.insert("attempt".into(), j.attempt.into());
    r.insert("epoch".into(), j.epoch.into());
    r.insert("epochs".into(), j.epochs.into());
    for (k, v) in j.params.as_object().into_iter().flatten() {
        r.insert(k.clone(), v.clone());
    }
    let m = j.latest.as_ref();
    // The named metrics some job reported; the lr as `lr_last` (the grid's lr is the starting one).
    let named = m.map_or_else(|| MetricsReport::default().named(), MetricsReport::named);
    for (metric, v) in named.iter().filter(|(n, _)| reported.contains(&n.name)) {
        let k = match metric.name {
            "lr" => "lr_last",
            name => name,
        };
        r.insert(k.into(), v.map(Value::from).unwrap_or(Value::Null));
    }
    // A command's own metrics, by name (`_last` added where a parameter has that name).
    for (k, v) in m.map(|m| &m.extra).into_iter().flatten() {
        let key = if r.contains_key(k) {
            format!("{k}_last")
        } else {
            k.clone()
        };
        r.insert(key, v.map(Value::from).unwrap_or(Value::Null));
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
}

/// The keys [`record`] writes for a job with these params and own metrics, in its order: those of
/// the record of a job that has just these names (so the two cannot disagree).
fn record_columns(
    tpe: Option<&TpeProgress>,
    params: &[String],
    own: &[String],
    reported: &[&str],
) -> Vec<String> {
    let skeleton = JobRow {
        id: 0,
        sweep_id: 0,
        params: Value::Object(params.iter().map(|k| (k.clone(), Value::Null)).collect()),
        status: JobStatus::Pending,
        attempt: 0,
        max_attempts: 0,
        epoch: 0,
        epochs: 0,
        worker: None,
        error: None,
        summary: None,
        started_at: None,
        finished_at: None,
        latest: (!own.is_empty()).then(|| MetricsReport {
            extra: own.iter().map(|k| (k.clone(), None)).collect(),
            ..Default::default()
        }),
        drawn_at: None,
    };
    record(&skeleton, tpe, 0, reported)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Every column any row has, in the order they first appear (rows in export order): from each
/// distinct shape of names once, not from the rows.
fn csv_columns(
    ordered: &[&JobKey],
    keys: &SweepKeys,
    tpe: Option<&TpeProgress>,
    reported: &[&str],
) -> Vec<String> {
    let mut cols: Vec<String> = vec![];
    let mut done = HashSet::new();
    for j in ordered {
        if !done.insert(j.shape) {
            continue;
        }
        let (params, own) = &keys.shapes[j.shape];
        for c in record_columns(tpe, params, own, reported) {
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
    }
    if cols.is_empty() {
        cols = record_columns(tpe, &[], &[], reported);
    }
    cols
}

fn csv_row(r: &Map<String, Value>, cols: &[String]) -> String {
    let cell = |v: Option<&Value>| -> String {
        let s = match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => neutralise_formula(s),
            Some(other) => other.to_string(),
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = cols
        .iter()
        .map(|c| cell(r.get(c)))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}

/// A text cell that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, or a leading tab or
/// CR) gets a leading apostrophe, as OWASP advises: a worker name or an error message is data, never
/// a command. Numbers are written as numbers and left alone.
fn neutralise_formula(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// A whole export of a sweep held in memory (its content type and text): what the streamed
/// response writes, in one string.
pub fn render(d: &SweepDetail, format: Format, opts: &TableOptions) -> (&'static str, String) {
    let keys = SweepKeys::of(&d.jobs, &objective_of(&d.spec).0);
    if format == Format::Markdown && opts.compare {
        return (
            format.content_type(),
            crate::results::study::compare(&keys.jobs),
        );
    }
    let mut export = Export::plan(&d.sweep, &d.spec, &keys, format, opts);
    let by_id: std::collections::HashMap<i64, &JobRow> = d.jobs.iter().map(|j| (j.id, j)).collect();
    let rows: Vec<JobRow> = export.order.iter().map(|id| by_id[id].clone()).collect();
    let mut out = export.head();
    out.push_str(&export.rows(&rows));
    out.push_str(&export.tail());
    (export.content_type(), out)
}

/// "Sweep `name` (id 3, 4 jobs): 5 epochs, device Cpu, finished 2026-11-28, commit abc123. Data: ...",
/// and a warning when the schedule is shorter than the study's.
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
    let mut line = format!(
        "Sweep `{}` (id {}, {} jobs): {epochs} epochs, device {}, finished {date}, commit {}. Data: {}.",
        d.sweep.name,
        d.sweep.id,
        d.jobs.len(),
        distinct("device"),
        distinct("git_commit"),
        data_used(&summaries)
    );
    if let Some(longest) = d.jobs.iter().map(|j| j.epochs).max() {
        if longest < crate::results::study::STUDY_EPOCHS {
            line.push_str(&format!(
                " A short schedule: {longest} epochs at most against the study's {}, so its accuracies are not comparable with the study's final ones.",
                crate::results::study::STUDY_EPOCHS
            ));
        }
    }
    line
}

/// Which data the runs used, from `summary.json`'s `data` (the trainer records the records it found
/// and the records it used), so a reader can tell a full-CIFAR-10 run from one on the mini set. Runs
/// of one source that used different amounts (a sweep over `limit_train`) read as one range.
fn data_used(summaries: &[&Value]) -> String {
    // (source, [min, max] train used, [min, max] test used, every run used all of it)
    let mut seen: Vec<(String, [u64; 2], [u64; 2], bool)> = vec![];
    for d in summaries.iter().filter_map(|s| s.get("data")) {
        let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
        let avail = (n("train_available"), n("test_available"));
        let used = (n("train_used"), n("test_used"));
        let source = describe_source(d.get("dataset").and_then(Value::as_str), avail);
        match seen.iter_mut().find(|s| s.0 == source) {
            Some(s) => {
                s.1 = [s.1[0].min(used.0), s.1[1].max(used.0)];
                s.2 = [s.2[0].min(used.1), s.2[1].max(used.1)];
                s.3 &= used == avail;
            }
            None => seen.push((source, [used.0; 2], [used.1; 2], used == avail)),
        }
    }
    seen.sort();
    let described: Vec<String> = seen
        .into_iter()
        .map(|(source, train, test, whole)| {
            let range = |r: [u64; 2]| {
                if r[0] == r[1] {
                    thousands(r[0])
                } else {
                    format!("{} to {}", thousands(r[0]), thousands(r[1]))
                }
            };
            if whole {
                source
            } else {
                format!("{source}, of which {} / {} used", range(train), range(test))
            }
        })
        .collect();
    if described.is_empty() {
        "not recorded".into()
    } else {
        described.join("; ")
    }
}

/// 50000 -> "50,000".
fn thousands(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn describe_source(dataset: Option<&str>, avail: (u64, u64)) -> String {
    match (dataset, avail) {
        (Some("synthetic"), _) => "synthetic images made from the seed".to_string(),
        (_, (50_000, 10_000)) => "the full CIFAR-10 (50,000 training / 10,000 test images)".into(),
        (_, (5_000, 1_000)) => {
            "the CIFAR-10 mini set (5,000 training / 1,000 test images, ../shared/data/cifar10-mini), not the full CIFAR-10".into()
        }
        (_, (a, b)) => format!("{} training / {} test CIFAR-10 records", thousands(a), thousands(b)),
    }
}

/// The markers of a README's results block: the unnamed block's (`<!-- results:begin -->`) or a
/// named one's (`<!-- results:NAME:begin -->`), so one README holds the results of several sweeps
/// and publishing one leaves the others alone.
pub fn markers(name: Option<&str>) -> Result<(String, String), String> {
    match name {
        None => Ok((BEGIN.to_string(), END.to_string())),
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok((
                format!("<!-- results:{n}:begin -->"),
                format!("<!-- results:{n}:end -->"),
            ))
        }
        Some(n) => Err(format!("block name {n:?}: use 1 to 64 of a-z, 0-9 and -")),
    }
}

/// Replaces what lies between the markers of the block `name` (exclusive) with `block`; the same
/// input gives the same output, so running it twice changes nothing.
pub fn rewrite_block(readme: &str, name: Option<&str>, block: &str) -> Result<String, String> {
    let (begin, end) = markers(name)?;
    let start = readme
        .find(&begin)
        .ok_or_else(|| format!("no {begin} marker"))?;
    let stop = readme[start..]
        .find(&end)
        .map(|i| i + start)
        .ok_or_else(|| format!("no {end} marker after {begin}"))?;
    Ok(format!(
        "{}{begin}\n{}\n{}",
        &readme[..start],
        block.trim_end(),
        &readme[stop..]
    ))
}

/// Each exploited PBT member's schedule as one cell: "1: lr=0.01, momentum=0.9; 4 (#7's checkpoint
/// of 3): lr=0.012, momentum=0.85", each segment from the first epoch it trained, its values of
/// the space `keys`. A member that never copied another has no stored segment and no entry.
pub fn schedule_cells(keys: &[String], rows: &[crate::store::ScheduleRow]) -> HashMap<i64, String> {
    let mut out: HashMap<i64, String> = HashMap::new();
    for (job, segment, from, donor, params) in rows {
        let values: Vec<String> = keys
            .iter()
            .filter_map(|k| Some(format!("{k}={}", shape::value_cell(params.get(k)?))))
            .collect();
        let start = match segment {
            0 => "1".to_string(),
            _ => format!("{} (#{donor}'s checkpoint of {from})", from + 1),
        };
        let cell = out.entry(*job).or_default();
        if !cell.is_empty() {
            cell.push_str("; ");
        }
        cell.push_str(&format!("{start}: {}", values.join(", ")));
    }
    out
}
