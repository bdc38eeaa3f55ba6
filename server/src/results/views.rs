//! The analysis views of a sweep, computed here so that what the dashboard draws the API also
//! gives: its shape (axes and reported metrics), slice plots (the metric against each parameter),
//! a contour surface over two parameters, and which parameters differ among compared jobs.
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

use crate::results::importance::{self, counted, Counted};
use crate::results::shape;
use crate::store::AnalysisTrial;
use crate::sweep::early_stop::Mode;
use crate::sweep::search::Distribution;
use crate::sweep::{value_key, SweepSpec};
use protocol::views::{Axis, Contour, JobRow, MetricInfo, Point, Slice, SweepShape};

/// Points a plot gets at most: beyond, the best are kept (a browser draws 2,000 circles at ease,
/// not 100,000).
pub const MAX_POINTS: usize = 2000;
/// Cells along a numerical axis of a contour, by default and at most.
pub const CONTOUR_SIZE: usize = 30;
pub const MAX_CONTOUR_SIZE: usize = 100;

/// An axis as the views draw it: a log-uniform space on a log scale, a grid's numbers on one when
/// they span a decade or more, strings and a search's choices as categories.
pub fn axis(name: &str, dist: &Distribution) -> Axis {
    let numbers = |scale: &str, low: f64, high: f64, int: bool| Axis {
        name: name.to_string(),
        scale: scale.into(),
        int,
        low: Some(low),
        high: Some(high),
        choices: None,
    };
    match dist {
        Distribution::LogUniform(lo, hi) => numbers("log", *lo, *hi, false),
        Distribution::Uniform(lo, hi) => numbers("linear", *lo, *hi, false),
        Distribution::Int(lo, hi) => numbers("linear", *lo as f64, *hi as f64, true),
        Distribution::Choice(values) => {
            let mut xs: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            if xs.len() < values.len() || xs.is_empty() {
                return Axis {
                    name: name.to_string(),
                    scale: "choice".into(),
                    int: false,
                    low: None,
                    high: None,
                    choices: Some(values.clone()),
                };
            }
            xs.sort_by(f64::total_cmp);
            let (lo, hi) = (xs[0], xs[xs.len() - 1]);
            let scale = match lo > 0.0 && hi / lo >= 10.0 {
                true => "log",
                false => "linear",
            };
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| a.as_f64().unwrap().total_cmp(&b.as_f64().unwrap()));
            Axis {
                choices: Some(sorted),
                ..numbers(scale, lo, hi, values.iter().all(Value::is_i64))
            }
        }
    }
}

/// A sweep's shape: its axes as the views draw them, and each metric its jobs reported with its
/// range (`ranges`: name, jobs, min, max), the objective first.
pub fn shape(stored: &Value, spec: &SweepSpec, ranges: &[(String, usize, f64, f64)]) -> SweepShape {
    let (objective, mode) = importance::objective(spec);
    let names: Vec<String> = ranges.iter().map(|r| r.0.clone()).collect();
    let metrics: Vec<MetricInfo> = shape::ordered(&names, &[&objective], true)
        .into_iter()
        .filter_map(|name| {
            let (_, jobs, min, max) = ranges.iter().find(|r| r.0 == name)?;
            let column = shape::MetricColumn {
                mode: shape::mode_of(&name, &[(&objective, mode)]),
                name,
                best: None,
            };
            Some(MetricInfo {
                label: column.header(),
                mode: column.mode.as_str().into(),
                percent: column.percent(),
                jobs: *jobs,
                min: Some(*min),
                max: Some(*max),
                name: column.name,
            })
        })
        .collect();
    // Judged by its objective where some job reported it, else by the first metric reported (a
    // command sweep without an objective has only its own).
    let (objective, mode) = match metrics.iter().any(|m| m.name == objective) {
        true => (objective, mode),
        false => match metrics.first() {
            Some(m) => (m.name.clone(), Mode::default_for(&m.name)),
            None => (objective, mode),
        },
    };
    SweepShape {
        axes: importance::axes(spec)
            .iter()
            .map(|(k, d)| axis(k, d))
            .collect(),
        metrics,
        objective,
        mode: mode.as_str().into(),
        study_grid: shape::is_study_grid(stored),
    }
}

/// The counted jobs as points, best first, at most `limit`; each numbered by its rank in the
/// order the ended jobs were drawn.
fn points(
    counted: &[Counted],
    all: &[AnalysisTrial],
    mode: Mode,
    limit: usize,
    names: &[&str],
) -> Vec<Point> {
    let mut drawn: Vec<&AnalysisTrial> = all.iter().collect();
    drawn.sort_by_key(|t| (t.drawn_at, t.id));
    let trial: HashMap<i64, usize> = drawn.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut best: Vec<&Counted> = counted.iter().collect();
    best.sort_by(|a, b| shape::best_first(mode, a.1, b.1).then(a.0.id.cmp(&b.0.id)));
    best.truncate(limit);
    best.into_iter()
        .map(|(t, v)| Point {
            job: t.id,
            trial: trial[&t.id],
            value: *v,
            params: names
                .iter()
                .filter_map(|k| t.params.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect(),
        })
        .collect()
}

/// The metric against each of the sweep's parameters: the counted jobs (the best `limit` when
/// there are more), best first.
pub fn slice(
    spec: &SweepSpec,
    trials: &[AnalysisTrial],
    metric: &str,
    mode: Mode,
    limit: usize,
) -> Result<Slice, String> {
    let (left_out, counted) = counted(trials, metric, "a slice plot")?;
    let axes: Vec<Axis> = importance::axes(spec)
        .iter()
        .map(|(k, d)| axis(k, d))
        .collect();
    let names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
    let points = points(&counted, trials, mode, limit, &names);
    Ok(Slice {
        metric: metric.into(),
        mode: mode.as_str().into(),
        trials: counted.len(),
        kept: points.len(),
        left_out,
        axes,
        points,
    })
}

/// The cell of a value on one axis (None: off the axis).
type CellOf = Box<dyn Fn(&Value) -> Option<usize>>;

/// Where a contour axis puts a value: its cells' centres, and the cell of a value.
struct Cells {
    centres: Vec<Value>,
    index: CellOf,
}

/// A choice's cells are its values; a number range's `size` cells are evenly spaced over it (in
/// log10 on a log scale), a value falling to the nearest centre.
fn cells(axis: &Axis, size: usize) -> Cells {
    if let Some(choices) = &axis.choices {
        let at: HashMap<String, usize> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| (value_key(c), i))
            .collect();
        return Cells {
            centres: choices.clone(),
            index: Box::new(move |v| at.get(&value_key(v)).copied()),
        };
    }
    let log = axis.scale == "log";
    let f = move |x: f64| if log { x.log10() } else { x };
    let (lo, hi) = (f(axis.low.unwrap_or(0.0)), f(axis.high.unwrap_or(1.0)));
    let n = match axis.int {
        true => size.min((axis.high.unwrap_or(0.0) - axis.low.unwrap_or(0.0)) as usize + 1),
        false => size,
    }
    .max(2);
    let step = (hi - lo) / (n - 1) as f64;
    let centres = (0..n)
        .map(|i| {
            let c = lo + step * i as f64;
            Value::from(if log { 10f64.powf(c) } else { c })
        })
        .collect();
    Cells {
        centres,
        index: Box::new(move |v| {
            let x = f(v.as_f64()?);
            (x.is_finite() && step > 0.0)
                .then(|| ((x - lo) / step).round().clamp(0.0, (n - 1) as f64) as usize)
        }),
    }
}

/// The metric over parameters `x` and `y`: each counted job's value averaged in the cell it falls
/// in, the empty cells filled by harmonic interpolation (each the mean of its neighbours, as a
/// membrane stretched over the measured cells), on a `size` x `size` grid at most.
#[allow(clippy::too_many_arguments)]
pub fn contour(
    spec: &SweepSpec,
    trials: &[AnalysisTrial],
    metric: &str,
    mode: Mode,
    (x, y): (&str, &str),
    size: usize,
    limit: usize,
) -> Result<Contour, String> {
    let axes: Vec<Axis> = importance::axes(spec)
        .iter()
        .map(|(k, d)| axis(k, d))
        .collect();
    let find = |name: &str| {
        axes.iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
                format!(
                    "parameter {name:?} is not one of the sweep's: {}",
                    names.join(", ")
                )
            })
    };
    let (xa, ya) = (find(x)?, find(y)?);
    if x == y {
        return Err(format!(
            "x and y are both {x:?}: a contour needs two parameters"
        ));
    }
    let (left_out, counted) = counted(trials, metric, "a contour")?;
    let (cx, cy) = (cells(&xa, size), cells(&ya, size));
    let (nx, ny) = (cx.centres.len(), cy.centres.len());
    let mut sum = vec![0.0; nx * ny];
    let mut count = vec![0u32; nx * ny];
    for (t, v) in &counted {
        let (Some(px), Some(py)) = (t.params.get(x), t.params.get(y)) else {
            continue;
        };
        if let (Some(i), Some(j)) = ((cx.index)(px), (cy.index)(py)) {
            sum[j * nx + i] += v;
            count[j * nx + i] += 1;
        }
    }
    if count.iter().all(|c| *c == 0) {
        return Err(format!(
            "no counted job has a value of both {x:?} and {y:?}"
        ));
    }
    let z = harmonic_fill(&sum, &count, nx, ny);
    let points = points(&counted, trials, mode, limit, &[x, y]);
    Ok(Contour {
        metric: metric.into(),
        mode: mode.as_str().into(),
        trials: counted.len(),
        kept: points.len(),
        left_out,
        method: format!(
            "mean of the jobs in each of {nx} x {ny} cells; empty cells by harmonic interpolation"
        ),
        x: xa,
        y: ya,
        xs: cx.centres,
        ys: cy.centres,
        z: z.chunks(nx).map(<[f64]>::to_vec).collect(),
        counts: count.chunks(nx).map(<[u32]>::to_vec).collect(),
        points,
    })
}

/// Measured cells keep their mean; each empty one becomes the mean of its neighbours, solved by
/// Gauss-Seidel sweeps from the measured mean until nothing moves (a 100 x 100 grid converges in
/// a few thousand sweeps, milliseconds).
fn harmonic_fill(sum: &[f64], count: &[u32], nx: usize, ny: usize) -> Vec<f64> {
    let known: Vec<bool> = count.iter().map(|c| *c > 0).collect();
    let measured: Vec<f64> = (0..sum.len())
        .filter(|&i| known[i])
        .map(|i| sum[i] / count[i] as f64)
        .collect();
    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
    let spread = measured.iter().fold(0.0f64, |m, v| m.max((v - mean).abs()));
    let mut z: Vec<f64> = (0..sum.len())
        .map(|i| match known[i] {
            true => sum[i] / count[i] as f64,
            false => mean,
        })
        .collect();
    let tolerance = 1e-9 * spread.max(f64::MIN_POSITIVE);
    for _ in 0..20_000 {
        let mut moved = 0.0f64;
        for j in 0..ny {
            for i in 0..nx {
                let at = j * nx + i;
                if known[at] {
                    continue;
                }
                let mut s = 0.0;
                let mut n = 0.0;
                for (di, dj) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (a, b) = (i as i64 + di, j as i64 + dj);
                    if a >= 0 && b >= 0 && (a as usize) < nx && (b as usize) < ny {
                        s += z[b as usize * nx + a as usize];
                        n += 1.0;
                    }
                }
                if n > 0.0 {
                    let new = s / n;
                    moved = moved.max((new - z[at]).abs());
                    z[at] = new;
                }
            }
        }
        if moved <= tolerance {
            break;
        }
    }
    z
}

/// The parameters whose values differ among these jobs, in the order first seen (one a job lacks
/// differs).
pub fn differing(jobs: &[&JobRow]) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for j in jobs {
        for k in j.params.as_object().into_iter().flat_map(Map::keys) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
        .into_iter()
        .filter(|k| {
            let values: HashSet<String> = jobs
                .iter()
                .map(|j| j.params.get(k).map(value_key).unwrap_or_default())
                .collect();
            values.len() > 1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_fill_keeps_measured_cells_and_interpolates_between() {
        // Two measured cells at the ends of a 5 x 1 strip: a straight line between them.
        let sum = [0.0, 0.0, 0.0, 0.0, 4.0];
        let count = [1, 0, 0, 0, 1];
        let z = harmonic_fill(&sum, &count, 5, 1);
        for (i, v) in z.iter().enumerate() {
            assert!((v - i as f64).abs() < 1e-6, "{z:?}");
        }
    }

    #[test]
    fn a_grids_numbers_are_an_ordered_axis_its_strings_categories() {
        let lr = axis(
            "lr",
            &Distribution::Choice(vec![Value::from(1e-2), Value::from(1e-4)]),
        );
        assert_eq!(
            (lr.scale.as_str(), lr.low, lr.high),
            ("log", Some(1e-4), Some(1e-2))
        );
        assert_eq!(lr.choices.unwrap()[0], Value::from(1e-4));
        let depth = axis(
            "depth",
            &Distribution::Choice(vec![Value::from("deep"), Value::from(3)]),
        );
        assert_eq!(depth.scale, "choice");
    }
}
