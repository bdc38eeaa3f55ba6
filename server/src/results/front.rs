//! A sweep's front: its completed trials that no other feasible completed trial dominates on the
//! objectives, feasible ones only (Optuna's `best_trials`). The objectives are the search's, or
//! any metrics asked for (the study's grid has none of its own, and its accuracy against seconds
//! is the question a batch size answers). Pure: the store reads the values, the route and the
//! exports call [`front`].
use protocol::views::{ObjectiveView, ParetoTrial, ParetoView};

use crate::results::shape::{is_fraction, short, value_cell};
use crate::results::table::table_row;

use crate::sweep::early_stop::Mode;
use crate::sweep::objectives::{total_violation, Constraint};
use crate::sweep::pareto;

/// A completed trial as the store reads it: (job, trial number, each objective's then each
/// constraint's metric at its last epoch, finite or None).
pub type Completed = (i64, i64, Vec<Option<f64>>);

/// The trials most points a view returns beside the front (`all`), best ranked first.
pub const MAX_POINTS: usize = 5_000;

/// The front of `rows` on `objectives` under `constraints`; with `all`, every trial that reported
/// each objective too (the front's first, then by rank), at most [`MAX_POINTS`]. Sorted by the
/// first objective, best first (ties by trial number). Parameters are the caller's to fill.
pub fn front(
    objectives: &[(String, Mode)],
    constraints: &[Constraint],
    rows: &[Completed],
    all: bool,
) -> ParetoView {
    let k = objectives.len();
    let judged: Vec<&Completed> = rows
        .iter()
        .filter(|r| r.2[..k].iter().all(|v| v.is_some()))
        .collect();
    let loss: Vec<Vec<f64>> = judged
        .iter()
        .map(|r| {
            r.2[..k]
                .iter()
                .zip(objectives)
                .map(|(v, (_, mode))| match mode {
                    Mode::Max => -v.unwrap_or(0.0),
                    Mode::Min => v.unwrap_or(0.0),
                })
                .collect()
        })
        .collect();
    let violations: Vec<f64> = judged
        .iter()
        .map(|r| total_violation(constraints, &r.2[k..]))
        .collect();
    let constrained = (!constraints.is_empty()).then_some(violations.as_slice());
    // Only the ranks a view needs are peeled: the front's, or enough for the points kept.
    let needed = if all { MAX_POINTS } else { 1 };
    let ranks = pareto::ranks(&loss, constrained, Some(needed));
    let on_front = |i: usize| ranks[i] == 0 && violations[i] <= 0.0;
    let mut picked: Vec<usize> = (0..judged.len()).filter(|&i| all || on_front(i)).collect();
    if picked.len() > MAX_POINTS {
        picked.sort_by_key(|&i| (ranks[i], judged[i].1));
        picked.truncate(MAX_POINTS);
    }
    picked.sort_by(|&a, &b| {
        loss[a][0]
            .total_cmp(&loss[b][0])
            .then(judged[a].1.cmp(&judged[b].1))
    });
    ParetoView {
        objectives: objectives
            .iter()
            .map(|(metric, mode)| ObjectiveView {
                metric: metric.clone(),
                mode: mode.as_str().into(),
            })
            .collect(),
        constraints: constraints.iter().map(Constraint::describe).collect(),
        judged: judged.len() as i64,
        front_size: (0..judged.len()).filter(|&i| on_front(i)).count() as i64,
        trials: picked
            .into_iter()
            .map(|i| ParetoTrial {
                job_id: judged[i].0,
                trial: judged[i].1,
                values: judged[i].2[..k].iter().map(|v| v.unwrap_or(0.0)).collect(),
                feasible: violations[i] <= 0.0,
                violation: violations[i].is_finite().then_some(violations[i]),
                front: on_front(i),
                params: None,
            })
            .collect(),
    }
}

/// `metric[:mode],...` (a query's `objectives`): each metric with its mode, given or natural.
pub fn parse_objectives(text: &str) -> Result<Vec<(String, Mode)>, String> {
    let mut out: Vec<(String, Mode)> = vec![];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (metric, mode) = match part.split_once(':') {
            Some((m, "max")) => (m, Mode::Max),
            Some((m, "min")) => (m, Mode::Min),
            Some((_, other)) => {
                return Err(format!("objectives: {other:?} is neither min nor max"))
            }
            None => (part, Mode::default_for(part)),
        };
        if !protocol::is_metric_name(metric) {
            return Err(format!("objectives: {metric:?} is not a metric name"));
        }
        if out.iter().any(|(m, _)| m == metric) {
            return Err(format!("objectives: {metric} is named twice"));
        }
        out.push((metric.to_string(), mode));
    }
    if !(1..=crate::sweep::objectives::MAX_OBJECTIVES).contains(&out.len()) {
        return Err("objectives: name 1 to 4 metrics, as metric[:max|min],...".into());
    }
    Ok(out)
}

/// The front as a markdown table (`server export SWEEP --pareto`): a row per trial on it, by the
/// first objective (best first), with its parameters and each objective's value.
pub fn markdown(v: &ParetoView) -> String {
    let front: Vec<&ParetoTrial> = v.trials.iter().filter(|t| t.front).collect();
    if front.is_empty() {
        return format!(
            "No trial is on the front yet: none of {} completed trials is feasible and reported every objective.\n",
            v.judged
        );
    }
    let mut axes: Vec<String> = vec![];
    for t in &front {
        for k in t
            .params
            .as_ref()
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if !axes.contains(k) {
                axes.push(k.clone());
            }
        }
    }
    // Parameters every trial of the front shares say nothing about the trade-off.
    axes.retain(|k| {
        let first = front[0].params.as_ref().and_then(|p| p.get(k));
        front
            .iter()
            .any(|t| t.params.as_ref().and_then(|p| p.get(k)) != first)
    });
    let mut head = vec!["job".to_string(), "trial".to_string()];
    head.extend(axes.iter().cloned());
    // Fractions as percentages, as every table shows them.
    let percent: Vec<bool> = v
        .objectives
        .iter()
        .map(|o| is_fraction(&o.metric))
        .collect();
    head.extend(v.objectives.iter().zip(&percent).map(|(o, p)| match p {
        true => format!("{} (%) ({})", o.metric, o.mode),
        false => format!("{} ({})", o.metric, o.mode),
    }));
    let mut out = format!(
        "The front: {} of {} completed trials{}.\n\n",
        v.front_size,
        v.judged,
        match v.constraints.is_empty() {
            true => String::new(),
            false => format!(" (feasible: {})", v.constraints.join(", ")),
        }
    );
    out.push_str(&table_row(&head));
    out.push_str(&format!("|{}|\n", vec!["---"; head.len()].join("|")));
    for t in front {
        let mut cells = vec![t.job_id.to_string(), t.trial.to_string()];
        cells.extend(axes.iter().map(|k| {
            t.params
                .as_ref()
                .and_then(|p| p.get(k))
                .map(value_cell)
                .unwrap_or_default()
        }));
        cells.extend(t.values.iter().zip(&percent).map(|(x, p)| match p {
            true => format!("{:.2}", 100.0 * x),
            false => short(*x),
        }));
        out.push_str(&table_row(&cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: a feasible trial is on the front when no other feasible trial dominates it.
    #[test]
    fn the_front_is_what_no_feasible_trial_dominates() {
        let objectives = vec![
            ("accuracy".to_string(), Mode::Max),
            ("seconds".to_string(), Mode::Min),
        ];
        let limit = Constraint {
            metric: "images_per_sec".into(),
            min: Some(100.0),
            max: None,
        };
        let mut rows: Vec<Completed> = vec![];
        let mut state = 7u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for i in 0..400 {
            let acc = next(20) as f64 / 20.0;
            let secs = next(15) as f64;
            let speed = match next(5) {
                0 => None,
                s => Some(40.0 * s as f64),
            };
            rows.push((1000 + i, i, vec![Some(acc), Some(secs), speed]));
        }
        let v = front(&objectives, std::slice::from_ref(&limit), &rows, false);
        let feasible: Vec<&Completed> = rows
            .iter()
            .filter(|r| limit.violation(r.2[2]) <= 0.0)
            .collect();
        let dominated = |r: &Completed| {
            feasible.iter().any(|o| {
                let (a, s) = (o.2[0].unwrap(), o.2[1].unwrap());
                let (ra, rs) = (r.2[0].unwrap(), r.2[1].unwrap());
                a >= ra && s <= rs && (a > ra || s < rs)
            })
        };
        let mut want: Vec<i64> = feasible
            .iter()
            .filter(|r| !dominated(r))
            .map(|r| r.0)
            .collect();
        let mut got: Vec<i64> = v.trials.iter().map(|t| t.job_id).collect();
        assert!(v
            .trials
            .windows(2)
            .all(|w| w[0].values[0] >= w[1].values[0]));
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(
            want.len() > 1,
            "ties make a front of several: {}",
            want.len()
        );
        assert_eq!(v.front_size, want.len() as i64);
    }
}
