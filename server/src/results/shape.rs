//! A sweep's own shape: its axes (grid keys, search space, the seed of repeats) and the metrics its
//! jobs reported, each with the direction that is better. Exports and views take their columns from
//! here, never from the study's layout, which is one layout among others ([`is_study_grid`]).
use serde_json::{Map, Value};

use crate::sweep::early_stop::Mode;
use protocol::{JobStatus, MetricsReport};

/// A stored spec's axes in the order written: its grid keys, then its search space's, then `seed`
/// when it repeats each point.
pub fn axes(spec: &Value) -> Vec<String> {
    let mut keys: Vec<String> = vec![];
    let space = spec.pointer("/search/space").and_then(Value::as_object);
    for k in grid_tables(spec)
        .iter()
        .flat_map(|g| g.keys())
        .chain(space.into_iter().flat_map(|s| s.keys()))
    {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    let repeats = spec.pointer("/run/repeats").and_then(Value::as_i64);
    if repeats.unwrap_or(1) > 1 && !keys.iter().any(|k| k == "seed") {
        keys.push("seed".into());
    }
    keys
}

/// `[grid]`, or each table of `[[grid]]`.
fn grid_tables(spec: &Value) -> Vec<&Map<String, Value>> {
    match spec.get("grid") {
        Some(Value::Object(g)) => vec![g],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_object).collect(),
        _ => vec![],
    }
}

/// Whether a sweep is the study's kind, laid out as the study's table (batch size x lr rows): the
/// trainer's jobs over a grid that varies the batch size or the lr. A search, a command's jobs or a
/// grid over other keys get the table of any sweep instead.
pub fn is_study_grid(spec: &Value) -> bool {
    spec.get("search").is_none()
        && spec.get("command").is_none()
        && grid_tables(spec)
            .iter()
            .any(|g| g.contains_key("batch_size") || g.contains_key("lr"))
}

/// One metric some job reported at its last epoch, as a column.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricColumn {
    pub name: String,
    /// Which way is better: the objective's mode, else as `[early_stop]` defaults it.
    pub mode: Mode,
    /// The best value among completed jobs, where at least two completed jobs have one (a lone
    /// result is not the best of anything) and they differ.
    pub best: Option<f64>,
}

impl MetricColumn {
    /// A fraction shown as a percentage (accuracy, precision, recall, F1).
    pub fn percent(&self) -> bool {
        is_fraction(&self.name)
    }

    /// Its header: what it is, which split a loss is, and its unit.
    pub fn header(&self) -> String {
        match self.name.as_str() {
            "accuracy" => "accuracy (%)".into(),
            "precision" => "precision (%)".into(),
            "recall" => "recall (%)".into(),
            "f1" => "F1 (%)".into(),
            "test_loss" => "test loss".into(),
            "train_loss" => "train loss".into(),
            "images_per_sec" => "images/s".into(),
            "seconds" => "epoch time (s)".into(),
            "lr" => "last lr".into(),
            own => own.into(),
        }
    }
}

/// Whether a named metric is a fraction in [0, 1].
pub fn is_fraction(name: &str) -> bool {
    matches!(name, "accuracy" | "precision" | "recall" | "f1")
}

/// The named metrics in the order a table shows them: the results first, the test split's loss
/// before the training one's; the schedule and the clock last.
const SHOWN_ORDER: [&str; 9] = [
    "accuracy",
    "test_loss",
    "train_loss",
    "precision",
    "recall",
    "f1",
    "images_per_sec",
    "seconds",
    "lr",
];

/// Metric names in the order tables and pickers show them: the objectives first (those among
/// them, in order), then the named ones ([`SHOWN_ORDER`]; `lr` and `seconds`, the schedule and the clock, only
/// when `all`), then a program's own by name.
pub fn ordered(names: &[String], objectives: &[&str], all: bool) -> Vec<String> {
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut out: Vec<String> = objectives
        .iter()
        .filter(|o| has(o))
        .map(|o| o.to_string())
        .collect();
    let named = SHOWN_ORDER
        .iter()
        .filter(|n| all || !matches!(**n, "lr" | "seconds"))
        .filter(|n| has(n))
        .map(|n| n.to_string());
    let mut own: Vec<String> = names
        .iter()
        .filter(|n| !protocol::is_named_metric(n))
        .cloned()
        .collect();
    own.sort();
    for n in named.chain(own) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// What a sweep's jobs reported at their last epoch, metric by metric, gathered job by job as the
/// keys are read (never every job's metrics held at once): which metrics any job reported, and
/// the range of each among completed jobs (its best, and whether they differ at all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricFacts {
    facts: Vec<Fact>,
}

#[derive(Debug, Clone, PartialEq)]
struct Fact {
    name: String,
    /// Jobs with a value (any status).
    reported: usize,
    /// Completed jobs with a finite value, and their range.
    completed: usize,
    min: f64,
    max: f64,
}

impl MetricFacts {
    /// One job's latest epoch.
    pub fn add(&mut self, status: JobStatus, m: &MetricsReport) {
        let named = m.named().into_iter().map(|(n, v)| (n.name, v));
        let own = m.extra.iter().map(|(k, v)| (k.as_str(), *v));
        for (name, v) in named.chain(own) {
            let Some(v) = v else { continue };
            let at = match self.facts.iter().position(|f| f.name == name) {
                Some(i) => i,
                None => {
                    self.facts.push(Fact {
                        name: name.to_string(),
                        reported: 0,
                        completed: 0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                    });
                    self.facts.len() - 1
                }
            };
            let f = &mut self.facts[at];
            f.reported += 1;
            if status == JobStatus::Completed && v.is_finite() {
                f.completed += 1;
                f.min = f.min.min(v);
                f.max = f.max.max(v);
            }
        }
    }

    /// Whether some job reported `name`.
    pub fn reported(&self, name: &str) -> bool {
        self.facts.iter().any(|f| f.name == name)
    }

    /// The names some job reported, in the order first seen.
    pub fn names(&self) -> Vec<String> {
        self.facts.iter().map(|f| f.name.clone()).collect()
    }

    /// The best value of `name` among completed jobs, where at least two have one and not all are
    /// equal (then none stands out: a lone result is not the best of anything).
    pub fn best(&self, name: &str, mode: Mode) -> Option<f64> {
        let f = self.facts.iter().find(|f| f.name == name)?;
        (f.completed >= 2 && f.min < f.max).then_some(match mode {
            Mode::Min => f.min,
            Mode::Max => f.max,
        })
    }
}

/// The metrics some job reported at its last epoch, as columns in [`ordered`]'s order, each with
/// the direction that is better and its best completed value.
pub fn metric_columns(
    facts: &MetricFacts,
    objectives: &[(&str, Mode)],
    all: bool,
) -> Vec<MetricColumn> {
    let names: Vec<&str> = objectives.iter().map(|o| o.0).collect();
    ordered(&facts.names(), &names, all)
        .into_iter()
        .map(|name| {
            let mode = mode_of(&name, objectives);
            let best = facts.best(&name, mode);
            MetricColumn { name, mode, best }
        })
        .collect()
}

/// Which way a metric is better: its objective's mode, else as `[early_stop]` defaults it.
pub fn mode_of(name: &str, objectives: &[(&str, Mode)]) -> Mode {
    match objectives.iter().find(|o| o.0 == name) {
        Some((_, mode)) => *mode,
        None => Mode::default_for(name),
    }
}

/// The order that puts better values first (equal ones: Equal, so a stable sort keeps their order).
pub fn best_first(mode: Mode, a: f64, b: f64) -> std::cmp::Ordering {
    match (better(mode, a, b), better(mode, b, a)) {
        (true, _) => std::cmp::Ordering::Less,
        (_, true) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}

/// Whether `a` is better than `b` in this mode.
pub fn better(mode: Mode, a: f64, b: f64) -> bool {
    match mode {
        Mode::Min => a < b,
        Mode::Max => a > b,
    }
}

/// A number to 4 significant digits, without trailing zeros; very large or small ones in
/// exponent form (a blow-up reads 7.652e18, not nineteen digits).
pub fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    if !(1e-3..1e6).contains(&x.abs()) {
        let e = format!("{x:.3e}");
        let (mantissa, exp) = e.split_once('e').expect("exponent form");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// A parameter's value as a table cell: a number to 4 significant digits, a string unquoted.
pub fn value_cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.as_f64().map(short).unwrap_or_else(|| n.to_string()),
        },
        Value::Null => String::new(),
        v => v.to_string(),
    }
}
