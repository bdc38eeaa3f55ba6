//! What the REST API's read side answers: sweeps with their counts, jobs with their latest metrics,
//! a job's history, the dashboard's pages, grid and curves, and the answer to a submit. Shapes of
//! answers, not of tables: the coordinator's store fills them, its API serialises them, and every
//! client (the `server` CLI, the worker, the load generator, the tests) reads them as these types.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{JobStatus, MetricsReport, SweepStatus};

/// The answer to a submitted sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Created {
    pub id: i64,
    pub jobs: usize,
    /// What the file may not mean as written (no `[grid]` and no `[search]`: one job; a command
    /// sweep: only `--allow-commands` workers take it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The answer to a submit with `?dry_run=true`: the sweep checked, nothing stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DryRun {
    pub name: String,
    /// Jobs it would make (a search sweep's trials, drawn as the sweep runs).
    pub jobs: usize,
    /// The parameters whose values differ between the jobs listed.
    pub varying: Vec<String>,
    /// The first jobs' parameters (at most 1,000; a TPE sweep's are drawn later and not listed).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub params: Vec<Value>,
    pub warnings: Vec<String>,
}

/// Jobs still to run or running, over every sweep (a worker's `--exit-when-idle` check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Unfinished {
    pub pending: i64,
    pub running: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRow {
    pub attempt: i64,
    pub worker: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    /// A job that spans nodes: the attempt's gang, by node rank (`worker` is node 0's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<GangMember>,
}

/// One worker of a multi-node attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GangMember {
    pub node_rank: i64,
    pub worker: String,
    pub joined_at: i64,
    /// Its part is over: its ranks have exited, or the attempt has ended.
    pub done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRow {
    pub id: i64,
    pub sweep_id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    pub status: JobStatus,
    pub attempt: i64,
    pub max_attempts: i64,
    pub epoch: i64,
    pub epochs: i64,
    pub worker: Option<String>,
    pub error: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub summary: Option<Value>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The last recorded epoch's metrics.
    pub latest: Option<MetricsReport>,
    /// When its point was chosen (at submit, or for a TPE trial when a claim drew it); None: a TPE
    /// trial still to be drawn (its params are only the shared settings).
    #[serde(default)]
    pub drawn_at: Option<i64>,
}

/// The longest text a job search ([`JobQuery::q`]) may look for.
pub const MAX_QUERY_TEXT: usize = 200;

/// Which page of a sweep's jobs, in what order, with what filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(default)]
pub struct JobQuery {
    pub offset: i64,
    /// At most 500 (default 50).
    pub limit: i64,
    /// idx (grid order), batch_size, lr, status, attempt, epoch, test_loss, train_loss, accuracy,
    /// precision, recall, f1, images_per_sec, worker, `param:NAME` (any parameter) or
    /// `metric:NAME` (a program's own metric).
    pub sort: Option<String>,
    pub desc: bool,
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Only jobs whose params or worker contain this text (a literal, ASCII case ignored; at most
    /// 200 bytes).
    pub q: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    /// Jobs matching the filter, over all pages.
    pub total: i64,
    pub offset: i64,
    pub jobs: Vec<JobRow>,
}

/// One batch size x lr cell of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GridCell {
    pub batch_size: i64,
    pub lr: f64,
    pub jobs: i64,
    pub completed: i64,
    pub diverged: i64,
    pub running: i64,
    /// Best final (or latest) accuracy over the cell's jobs.
    pub accuracy: Option<f64>,
    pub epoch: i64,
    pub epochs: i64,
}

/// One learning curve, column-wise (downsampled epochs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Series {
    pub batch_size: i64,
    pub job_id: i64,
    pub status: JobStatus,
    pub epoch: Vec<i64>,
    pub lr: Vec<Option<f64>>,
    pub train_loss: Vec<Option<f64>>,
    pub test_loss: Vec<Option<f64>>,
    pub accuracy: Vec<Option<f64>>,
    /// A command job's own metrics by name, one value per epoch of `epoch` (null where absent).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, Vec<Option<f64>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobRow,
    pub metrics: Vec<MetricsReport>,
    /// A page of its attempts, oldest first (`?attempts_offset=&attempts_limit=`, 100 by default).
    pub attempts: Vec<AttemptRow>,
    /// How many attempts it has had (the pages' total).
    #[serde(default)]
    pub attempts_total: i64,
    /// Why the job waits, so it does not look stuck: a multi-node job whose gang is forming ("waiting
    /// for 1 more worker with 4 free ranks"), or a pending job a worker near the end of its
    /// allocation passed over ("needs about 42 min per epoch; the worker had 9 min left").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// A population-based training member's segments after its first, oldest first: each began
    /// when it copied a donor's checkpoint (docs/search.md, "Population-based training").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

/// A PBT sweep's best completed member and the schedule that made its weights: its lineage
/// through the donors it copied (each step the epochs one member trained with one set of params),
/// and, for our trainer, a sweep file that replays it as one plain run (`[train] schedule`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    pub sweep_id: i64,
    pub job_id: i64,
    pub metric: String,
    pub mode: String,
    pub value: Option<f64>,
    pub steps: Vec<ScheduleStep>,
    /// The replay as a sweep file (TOML); None for a command sweep (its program reads no schedule).
    pub replay: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleStep {
    pub first_epoch: i64,
    pub last_epoch: i64,
    /// The member that trained these epochs.
    pub job_id: i64,
    /// The values of the PBT space's keys.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A PBT sweep's members for the dashboard's population view (the first `limit` by job id): each
/// member's metric by epoch (its current record), and its segments, segment 0 its initial draw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopulationView {
    pub metric: String,
    pub total: i64,
    pub members: Vec<PopulationMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopulationMember {
    pub job_id: i64,
    pub status: JobStatus,
    /// (epoch, value) of its current record.
    pub points: Vec<(i64, Option<f64>)>,
    /// Segment 0 (its initial values) first, then one per exploit: from which epoch, with which
    /// values of the space, copied from which donor (itself for segment 0).
    pub segments: Vec<PopulationSegment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopulationSegment {
    pub from_epoch: i64,
    pub at_epoch: i64,
    pub donor: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A PBT member's segment: from `from_epoch` on (the donor's point) it trained with `params`, the
/// donor's explored, decided on its report of `at_epoch`. `replaced` holds the epochs past
/// `from_epoch` that the segment before it had recorded (kept, not overwritten).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Segment {
    pub segment: i64,
    pub from_epoch: i64,
    pub at_epoch: i64,
    pub donor: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, serde_json::Value>,
    pub decided_at: i64,
    #[serde(default)]
    pub replaced: Vec<MetricsReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepRow {
    pub id: i64,
    pub name: String,
    pub status: SweepStatus,
    pub created_at: i64,
    /// Number of jobs (the sweep document's `jobs` is the list of them).
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub completed: i64,
    pub diverged: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Stopped early by the sweep's `[early_stop]` rule.
    pub pruned: i64,
    /// Epochs recorded by all the sweep's jobs, and what running every job to its last epoch
    /// would take: with early stopping, the difference is the compute it saved.
    pub epochs_spent: i64,
    pub epochs_budget: i64,
    pub best_accuracy: Option<f64>,
    /// When its last job ended (ms since the epoch; None before any did): with `created_at`, how
    /// long a finished sweep took.
    #[serde(default)]
    pub last_finished_at: Option<i64>,
    /// TPE sweeps: trials drawn of `trials`, and the best so far on the search's metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpe: Option<TpeProgress>,
}

/// A search's progress (`[search]` with a metric or objectives; the name is TPE's, which had it
/// first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TpeProgress {
    /// `random`, `tpe` or `nsga2`.
    #[serde(default)]
    pub method: String,
    /// The metric trials are judged by (the first objective's), and whether larger (`max`) or
    /// smaller (`min`) is better.
    pub metric: String,
    pub mode: String,
    /// Trials drawn so far, of `trials` (a model's are drawn when claimed).
    pub drawn: i64,
    pub trials: i64,
    /// The best completed trial so far: its job and value (one objective).
    pub best_job: Option<i64>,
    pub best_value: Option<f64>,
    /// Several objectives: all of them, and how many trials are on the front so far (no single
    /// trial is best).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Vec<ObjectiveView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<i64>,
}

/// One objective: a metric and which way is better (`max` or `min`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ObjectiveView {
    pub metric: String,
    pub mode: String,
}

/// `GET /api/sweeps/{id}/pareto`: the completed trials no other feasible completed trial
/// dominates on the objectives, feasible ones only; with `all`, every trial that reported each
/// objective too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParetoView {
    pub objectives: Vec<ObjectiveView>,
    /// The search's constraints, as `metric >= min` or `metric <= max`.
    pub constraints: Vec<String>,
    /// Completed trials that reported every objective, and how many of them are on the front.
    pub judged: i64,
    pub front_size: i64,
    /// By the first objective, best first.
    pub trials: Vec<ParetoTrial>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParetoTrial {
    pub job_id: i64,
    /// Its trial number in the sweep (the order drawn).
    pub trial: i64,
    /// Each objective's value, in the objectives' order.
    pub values: Vec<f64>,
    pub feasible: bool,
    /// The sum of its constraints' violations (0 when feasible; null when a constraint's metric
    /// was never reported: infinitely far).
    pub violation: Option<f64>,
    /// On the front.
    pub front: bool,
    /// The front's trials: their parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub params: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepDetail {
    #[serde(flatten)]
    pub sweep: SweepRow,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: Value,
    pub jobs: Vec<JobRow>,
}

/// `GET /api/sweeps/{id}/importance`: which parameter mattered for a metric, as Optuna's
/// PED-ANOVA computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Importance {
    /// `ped_anova`.
    pub method: String,
    pub metric: String,
    /// `min` or `max`.
    pub mode: String,
    /// The completed jobs with a finite value that were counted.
    pub trials: usize,
    pub left_out: LeftOut,
    /// Each parameter's share (they sum to 1), largest first.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub importances: serde_json::Map<String, Value>,
    /// The best counted job, with its value of each parameter.
    pub best: Option<BestTrial>,
    /// Set when the answer rests on too few jobs to be stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The ended jobs an importance leaves out, by why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeftOut {
    pub diverged: usize,
    pub pruned: usize,
    /// Completed without a finite value of the metric.
    pub no_value: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BestTrial {
    pub job: i64,
    pub value: f64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, Value>,
}

/// One of a sweep's axes as the analysis views draw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Axis {
    pub name: String,
    /// `linear`, `log` (a log-uniform space, or grid numbers that span a decade or more) or
    /// `choice` (strings, booleans, or choices of a search).
    pub scale: String,
    /// Whole numbers only.
    pub int: bool,
    /// Its range (numbers) or its values in order (choices, and a grid's values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
}

/// A metric some job of a sweep reported at its last epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricInfo {
    pub name: String,
    /// What a table heads it with (`test loss`, `accuracy (%)`, a program's own name).
    pub label: String,
    /// Which way is better: `min` or `max`.
    pub mode: String,
    /// A fraction (accuracy, precision, recall, F1), shown as a percentage.
    pub percent: bool,
    /// Jobs with a finite value, and their range.
    pub jobs: usize,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// `GET /api/sweeps/{id}/shape`: what a sweep varies and what its jobs reported, which every
/// view and export takes its columns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepShape {
    pub axes: Vec<Axis>,
    pub metrics: Vec<MetricInfo>,
    /// The metric the sweep is judged by (its TPE objective, else its early-stopping rule's, else
    /// accuracy), where some job reported it; else the first metric reported. And its mode.
    pub objective: String,
    pub mode: String,
    /// Laid out as the study's table (batch size x lr).
    pub study_grid: bool,
}

/// One counted job in a slice or contour plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Point {
    pub job: i64,
    /// Its trial number: its rank in the order the sweep's points were drawn.
    pub trial: usize,
    pub value: f64,
    /// Its value of each plotted parameter (absent where it has none).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Map<String, Value>,
}

/// `GET /api/sweeps/{id}/slice`: the metric against each parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Slice {
    pub metric: String,
    pub mode: String,
    /// Completed jobs with a finite value.
    pub trials: usize,
    /// The points returned: all of them, or the best `points` when there are more.
    pub kept: usize,
    pub left_out: LeftOut,
    pub axes: Vec<Axis>,
    /// One per kept job, best first (each plot reads its parameter from `params`).
    pub points: Vec<Point>,
}

/// `GET /api/sweeps/{id}/contour`: the metric over two parameters, interpolated on a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contour {
    pub metric: String,
    pub mode: String,
    pub trials: usize,
    pub kept: usize,
    pub left_out: LeftOut,
    pub x: Axis,
    pub y: Axis,
    /// How the surface was made, in words.
    pub method: String,
    /// The cells' centres along each axis: numbers (log-spaced on a log axis) or a choice's values.
    pub xs: Vec<Value>,
    pub ys: Vec<Value>,
    /// `z[i][j]`: the surface at (xs[j], ys[i]); `counts[i][j]`: the jobs measured in that cell
    /// (0: interpolated).
    pub z: Vec<Vec<f64>>,
    pub counts: Vec<Vec<u32>>,
    pub points: Vec<Point>,
}

/// One job in a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Compared {
    #[serde(flatten)]
    pub job: JobRow,
    pub sweep_name: String,
    /// Every epoch it recorded, in order (its latest attempt's).
    pub metrics: Vec<MetricsReport>,
}

/// `GET /api/compare?jobs=...`: 2 to 5 jobs side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Comparison {
    pub jobs: Vec<Compared>,
    /// The parameters whose values differ among them (one absent from some counts as differing).
    pub differing: Vec<String>,
}

/// One job's curve of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLine {
    pub job: i64,
    pub status: JobStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    /// Its latest value of the metric (what it is ranked by).
    pub last: f64,
    pub epoch: Vec<i64>,
    /// The metric at each epoch of `epoch` (null where not reported or not finite).
    pub value: Vec<Option<f64>>,
}

/// `GET /api/sweeps/{id}/runs`: the curves of a sweep's runs for one metric, overlaid: the best
/// `limit` by their latest value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Runs {
    pub metric: String,
    pub mode: String,
    /// Jobs with a finite latest value (those `lines` were chosen from).
    pub total: usize,
    /// Best first.
    pub lines: Vec<RunLine>,
}

/// A duration in ms as the coordinator shows and stores it in a passed-over job's reason: whole
/// seconds under two minutes, else whole minutes (so the reason changes, and is written, rarely).
pub fn shown_ms(ms: i64) -> i64 {
    match ms {
        ..120_000 => (ms + 500) / 1000 * 1000,
        120_000.. => (ms + 30_000) / 60_000 * 60_000,
    }
}

/// A duration as words: "42 s", "9 min", "3 h 5 min".
pub fn duration_words(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        ..120 => format!("{s} s"),
        120..7200 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

/// Why a worker near its end passed a job over.
pub fn passed_over(need_ms: i64, left_ms: i64) -> String {
    format!(
        "needs about {} per epoch; the worker had {} left",
        duration_words(need_ms),
        duration_words(left_ms)
    )
}
