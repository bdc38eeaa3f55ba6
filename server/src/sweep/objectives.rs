//! What a search's trials are judged by: one objective (`metric`, `mode`) or several
//! (`objectives`, 1 to 4), and any number of constraints (`[[search.constraints]]`, a metric with
//! a `min` or a `max`). A trial's value of each is its metric at the last epoch it reported. With
//! several objectives no single trial is best: the trials no other feasible trial dominates form
//! the front (docs/search.md#several-objectives).
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::early_stop::Mode;
use super::{err, Keys, SpecError};

/// The most objectives a search takes (Optuna's samplers take more; a front of more than four is
/// beyond what a person reads, and every view draws pairs).
pub const MAX_OBJECTIVES: usize = 4;
/// The most constraints a search takes.
pub const MAX_CONSTRAINTS: usize = 16;

/// One objective: a reported metric and which way is better.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// A reported metric (a trainer's named metric, or with `[command]` the program's own).
    pub metric: String,
    /// `max` or `min` (by default: smaller for losses and seconds, else larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl Objective {
    /// Its mode, given or the metric's natural one.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_else(|| Mode::default_for(&self.metric))
    }
}

/// One constraint: feasible when `metric` <= `max` (or >= `min`); exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Constraint {
    /// How far `value` lies past the bound, in the metric's own units (0: satisfied). A trial that
    /// did not report the metric violates it infinitely (our choice: ranked after every finite
    /// violation).
    pub fn violation(&self, value: Option<f64>) -> f64 {
        let Some(v) = value.filter(|v| !v.is_nan()) else {
            return f64::INFINITY;
        };
        let past = match (self.min, self.max) {
            (Some(min), _) => min - v,
            (_, Some(max)) => v - max,
            _ => 0.0,
        };
        past.max(0.0)
    }

    /// As the dashboard and exports say it: `images_per_sec >= 200`.
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(min), _) => format!("{} >= {min}", self.metric),
            (_, Some(max)) => format!("{} <= {max}", self.metric),
            _ => self.metric.clone(),
        }
    }
}

/// The sum of a trial's violations, from its values of the constraints' metrics (in order).
pub fn total_violation(constraints: &[Constraint], values: &[Option<f64>]) -> f64 {
    constraints
        .iter()
        .zip(values)
        .map(|(c, v)| c.violation(*v))
        .sum()
}

/// What `[search]` says it is judged by: `objectives`, or `metric` (with `mode`) as one.
#[derive(Debug, Clone, Copy)]
pub struct Given<'a> {
    pub objectives: Option<&'a [Objective]>,
    pub metric: Option<&'a str>,
    pub mode: Option<Mode>,
}

/// The objectives `[search]` gives: `objectives`, or `metric` (with `mode`) as one, or `default`
/// when neither is given. Both at once is refused, as are zero or more than four, a metric named twice,
/// and (trainer sweeps) a metric the trainer never reports.
pub fn objectives(
    file: Given,
    default: Option<&str>,
    keys: Keys,
) -> Result<Vec<(String, Mode)>, SpecError> {
    if file.objectives.is_some() && (file.metric.is_some() || file.mode.is_some()) {
        return err(
            "search.objectives",
            "give either metric (and mode) for one objective, or objectives; not both",
        );
    }
    let given: Vec<(String, Objective)> = match (file.objectives, file.metric) {
        (Some(list), _) => list
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("search.objectives[{i}].metric"), o.clone()))
            .collect(),
        (None, Some(metric)) => vec![(
            "search.metric".into(),
            Objective {
                metric: metric.to_string(),
                mode: file.mode,
            },
        )],
        (None, None) => match (default, file.mode) {
            (Some(m), mode) => vec![(
                "search.metric".into(),
                Objective {
                    metric: m.into(),
                    mode,
                },
            )],
            (None, Some(_)) => return err("search.mode", "needs a metric to apply to"),
            (None, None) => vec![],
        },
    };
    if file.objectives.is_some() && !(1..=MAX_OBJECTIVES).contains(&given.len()) {
        return err(
            "search.objectives",
            format!("must list 1 to {MAX_OBJECTIVES} objectives"),
        );
    }
    let mut out: Vec<(String, Mode)> = vec![];
    for (field, o) in given {
        check_metric(&field, &o.metric, keys)?;
        if out.iter().any(|(m, _)| *m == o.metric) {
            return err(field, format!("{} is named twice", o.metric));
        }
        out.push((o.metric.clone(), o.mode()));
    }
    Ok(out)
}

/// `[[search.constraints]]`, each with exactly one finite bound on a metric a job reports.
pub fn constraints(list: Option<&[Constraint]>, keys: Keys) -> Result<Vec<Constraint>, SpecError> {
    let list = list.unwrap_or_default().to_vec();
    if list.len() > MAX_CONSTRAINTS {
        return err(
            "search.constraints",
            format!("at most {MAX_CONSTRAINTS} constraints"),
        );
    }
    for (i, c) in list.iter().enumerate() {
        let at = format!("search.constraints[{i}]");
        check_metric(&format!("{at}.metric"), &c.metric, keys)?;
        let bound =
            match (c.min, c.max) {
                (Some(v), None) => ("min", v),
                (None, Some(v)) => ("max", v),
                _ => return err(
                    at,
                    "give exactly one of min (feasible at or above it) and max (at or below it)",
                ),
            };
        if !bound.1.is_finite() {
            return err(format!("{at}.{}", bound.0), "must be a finite number");
        }
    }
    Ok(list)
}

/// A metric name a job can report: any well-formed name with `[command]`, else one of the
/// trainer's named metrics.
fn check_metric(field: &str, metric: &str, keys: Keys) -> Result<(), SpecError> {
    if !protocol::is_metric_name(metric) {
        return err(
            field,
            "must name a reported metric (letters, digits, _ . - /)",
        );
    }
    if keys == Keys::Trainer && !protocol::is_named_metric(metric) {
        return err(
            field,
            format!(
                "must be one of {} (a command job's own metric names are allowed in sweeps with [command])",
                protocol::named_metric_names().join(", ")
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_is_the_distance_past_the_bound() {
        let min = Constraint {
            metric: "images_per_sec".into(),
            min: Some(200.0),
            max: None,
        };
        assert_eq!(min.violation(Some(150.0)), 50.0);
        assert_eq!(min.violation(Some(250.0)), 0.0);
        assert_eq!(min.violation(None), f64::INFINITY);
        let max = Constraint {
            metric: "seconds".into(),
            min: None,
            max: Some(10.0),
        };
        assert_eq!(max.violation(Some(12.5)), 2.5);
        assert_eq!(
            total_violation(&[min, max], &[Some(190.0), Some(11.0)]),
            11.0
        );
    }
}
