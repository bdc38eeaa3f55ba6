//! The worker protocol, defined once. The coordinator (`server`) parses these types and the worker
//! (`worker`) encodes them, so renaming a field breaks the build on both sides instead of silently
//! breaking a running sweep. Serde only: the worker never depends on axum or sqlx, the coordinator
//! never on tch. With the `openapi` feature the types also describe themselves for utoipa.
//!
//! A worker's life: [`routes::CLAIM`] a job ([`ClaimRequest`] -> [`Claim`] or 204), then while its
//! trainer runs, [`routes::heartbeat`] ([`HeartbeatRequest`] -> [`HeartbeatReply`]) at least three
//! times per lease, [`routes::metrics`] once per epoch ([`MetricsReport`]), the checkpoint after each
//! epoch ([`routes::checkpoint`]), and at the end [`routes::finish`] ([`FinishRequest`]) or
//! [`routes::release`] ([`ReleaseRequest`]). Every write names its attempt; a write from an attempt
//! that no longer holds the job gets 409.
// The coordinator and the protocol need no unsafe code; only the worker (libtorch, signals) does.
#![forbid(unsafe_code)]
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod command;
pub mod credentials;
pub mod train;
pub mod views;
pub use command::CommandSpec;

/// Integers as JSON Schema defines them: a number with no fractional part, written `3` or `3.0`
/// (the OpenAPI document says `integer`, and generated clients may write either).
mod integer {
    use serde::de::{Deserialize, Deserializer, Error};

    fn of(n: serde_json::Number) -> Option<i64> {
        n.as_i64().or_else(|| {
            // Exactly representable integers only (|x| < 2^53), never a rounded value.
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                .map(|f| f as i64)
        })
    }

    pub(crate) fn exact<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        of(n.clone()).ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}")))
    }

    pub(crate) fn exact_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => of(n.clone())
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}"))),
        }
    }
}

pub mod listening;
pub mod routes;

/// Where a job is in its life. Stored as these lowercase words (the SQL `CHECK` lists them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Diverged,
    Failed,
    Cancelled,
    /// Stopped early by the sweep's early-stopping rule: a result (its metrics and epoch count are
    /// kept), never retried.
    Pruned,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Diverged,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Pruned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Diverged => "diverged",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Pruned => "pruned",
        }
    }

    /// Parses the stored word; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The job has ended and will not run again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a sweep is, derived from its jobs (never stored: a sweep's status is what its jobs say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SweepStatus {
    /// No job has been claimed yet.
    Pending,
    /// Some job runs, or some have ended while others wait.
    Running,
    /// Every job has ended.
    Finished,
    /// Cancelled by a user: pending jobs ended at once, running ones on their next heartbeat.
    Cancelled,
}

impl SweepStatus {
    /// The status of a sweep with these job counts.
    pub fn of(cancelled: bool, pending: i64, running: i64, total: i64) -> Self {
        if cancelled {
            SweepStatus::Cancelled
        } else if running > 0 || (pending > 0 && pending < total) {
            SweepStatus::Running
        } else if pending > 0 {
            SweepStatus::Pending
        } else {
            SweepStatus::Finished
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SweepStatus::Pending => "pending",
            SweepStatus::Running => "running",
            SweepStatus::Finished => "finished",
            SweepStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for SweepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The REST API's version, `MAJOR.MINOR`: a client written for `M.N` works with a coordinator of
/// the same major and a minor of at least `N` (minors only add routes and optional fields). Said by
/// `/healthz` (its [`API_VERSION_HEADER`], and a JSON body when asked for one) and by OpenAPI's
/// `info.version`. 1.1 added ask and tell.
pub const API_VERSION: &str = "1.1";
/// The header `/healthz` states [`API_VERSION`] in.
pub const API_VERSION_HEADER: &str = "x-api-version";

/// `POST /api/sweeps/{id}/ask`: a trial of an external sweep (`[run] external = true`) for the
/// caller's own loop, under the same exactly-once claim a worker makes. The answer is a [`Claim`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    /// The lease's length (default: the coordinator's `--lease-seconds`; at most a day); heartbeats
    /// renew it by at least the coordinator's lease.
    #[serde(default, deserialize_with = "integer::exact_opt")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub lease_seconds: Option<i64>,
    /// Who asks (shown in the job's attempts; default `ask`). A worker credential asks under its name.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub worker: Option<String>,
}

/// How a told trial ended (Optuna's `TrialState` of a finished trial).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TellState {
    /// With its value(s): `null` for a value that is not a number (NaN) ends it `diverged`.
    #[default]
    Completed,
    /// Retried (asked again) while the sweep's `[run] max_attempts` allow, as a worker's failure.
    Failed,
    /// Stopped early (after the early-stopping rule said so, or by the caller's own decision).
    Pruned,
}

/// A field that is there, `null` included (serde's `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `POST /api/sweeps/{id}/tell`, with the ask's `X-Lease-Secret`: a trial's final value(s), recorded
/// as its objectives' metrics at its last reported epoch (1 if it reported none), and its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TellRequest {
    #[serde(deserialize_with = "integer::exact")]
    pub job_id: i64,
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
    /// The value of a sweep with one objective (`null`: NaN).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub value: Option<Value>,
    /// The values of a sweep with several objectives, in their order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<f64>>))]
    pub values: Option<Vec<Value>>,
    #[serde(default)]
    pub state: TellState,
    /// Why it failed (kept as the job's error, at most 8 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a worker ends an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The trainer finished every epoch.
    Completed,
    /// A non-finite loss: a result, never retried.
    Diverged,
    /// Retried until the job's attempts run out.
    Failed,
    /// After a cancel seen on a heartbeat.
    Cancelled,
    /// After a stop from the sweep's early-stopping rule (the trainer committed its epoch).
    Pruned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Diverged => "diverged",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Pruned => "pruned",
        }
    }
}

/// What a worker has free; a claim only hands out a job that fits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capacity {
    /// Free ranks (devices or CPU rank slots): a job needs `nproc_per_node` of them.
    #[serde(deserialize_with = "integer::exact")]
    pub ranks: i64,
    /// Largest per-process batch size the free slot takes (packing small jobs); none: any.
    #[serde(deserialize_with = "integer::exact_opt", default)]
    pub max_batch_size: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    /// The worker's name (at most 200 bytes), shown in the job's attempts.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub worker: String,
    pub capacity: Option<Capacity>,
    /// The worker runs command jobs (`worker run --allow-commands`); without it, it is never
    /// handed one.
    #[serde(default)]
    pub accepts_commands: bool,
    /// Where this worker's ranks would meet the others of a job that spans nodes, should it
    /// become that job's node 0 (`worker run --advertise-addr`, and a port it picked). Without
    /// it, the worker is never handed a job with `nnodes` > 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous: Option<Rendezvous>,
    /// When the worker gives back whatever it runs (Unix time in ms, by the coordinator's clock:
    /// its allocation's end less its margins, `worker run --end-time`). A job is handed out only
    /// if its expected time to its next committed epoch fits before it; none: any job.
    #[serde(
        default,
        deserialize_with = "integer::exact_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<i64>,
}

/// Pending work of one shape (`GET /api/jobs/pending-shapes`): what a worker allocation needs to
/// run it. An autoscaler sizes a cluster from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingShape {
    /// Workers (nodes) one job spans.
    pub nnodes: i64,
    /// Ranks on each of them.
    pub nproc_per_node: i64,
    /// A `[command]` job (run only by `worker run --allow-commands`).
    pub command: bool,
    /// GPUs each node needs: `nproc_per_node` when the job's `device` is `cuda`, 0 when it is
    /// `cpu`, none when the job does not say (the worker's devices decide).
    pub gpus_per_node: Option<i64>,
    /// Pending jobs of this shape.
    pub jobs: i64,
    /// Seconds per epoch the coordinator expects of them (from their sweep's reports), if known.
    pub epoch_seconds: Option<f64>,
}

/// The address and port where a multi-node job's ranks meet (c10d's `MASTER_ADDR`/`MASTER_PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rendezvous {
    /// A host name or IP address the other nodes can reach (at most 255 bytes).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 255))]
    pub addr: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u16,
}

/// This worker's part in a job that spans `nnodes` workers (a gang): which node it is and where
/// the ranks meet. The job starts once every node has joined ([`HeartbeatReply::gang`] says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GangPart {
    pub nnodes: i64,
    /// 0 for the worker that started the gang: it alone reports metrics, uploads checkpoints and
    /// finishes the job; every member heartbeats.
    pub node_rank: i64,
    /// Node 0's rendezvous.
    pub master: Rendezvous,
}

/// How far a gang has formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GangState {
    /// Members so far (node 0 included).
    pub joined: i64,
    pub nnodes: i64,
}

impl GangState {
    /// Every node has joined: the members start their ranks.
    pub fn formed(&self) -> bool {
        self.joined >= self.nnodes
    }
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    pub id: i64,
    pub sweep_id: i64,
    /// The fencing token: every write of this attempt names it.
    pub attempt: i64,
    /// The job's full `worker train` settings, or a command job's parameters.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    /// A command job: the program to run instead of `worker train` (its argv still has its
    /// placeholders: the worker renders them with [`command::render`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSpec>,
    /// The coordinator's clock (Unix ms).
    pub lease_expires_at: i64,
    /// The lease's length: a worker heartbeats well inside it (its clock need not agree with the
    /// coordinator's). Absent from older coordinators.
    #[serde(default)]
    pub lease_ms: Option<i64>,
    /// This claim's secret: every write of the attempt carries it in [`LEASE_SECRET_HEADER`], so
    /// only the holder of the lease may write (the attempt number is public). Random per claim,
    /// shown only here.
    #[serde(default)]
    pub lease_secret: String,
    /// A job that spans nodes: this worker's part in it (its writes name its `node_rank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangPart>,
}

/// The header that carries a claim's [`Claim::lease_secret`] on each write of its attempt
/// (heartbeat, metrics, finish, release, checkpoint upload and download, log append).
pub const LEASE_SECRET_HEADER: &str = "x-lease-secret";

/// What a worker holds while it runs a job: the job, its attempt (the fencing token) and the
/// attempt's secret.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease<'a> {
    pub job: i64,
    pub attempt: i64,
    pub secret: &'a str,
    /// A gang member's node (its writes name it); None for a single-node job.
    pub node_rank: Option<i64>,
}

impl Claim {
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            job: self.id,
            attempt: self.attempt,
            secret: &self.lease_secret,
            node_rank: self.gang.as_ref().map(|g| g.node_rank),
        }
    }

    /// A gang member other than node 0: it heartbeats, but node 0 reports, uploads and finishes.
    pub fn is_gang_member(&self) -> bool {
        self.gang.as_ref().is_some_and(|g| g.node_rank > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
    /// A gang member's node (its claim's [`GangPart::node_rank`]); absent for a single-node job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_rank: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    /// The job's sweep was cancelled: stop the trainer and finish `cancelled`.
    pub cancel: bool,
    /// The sweep's early-stopping rule stopped the job: stop the trainer the way SIGTERM does
    /// (its epoch committed) and finish `pruned`. Absent from older coordinators.
    #[serde(default)]
    pub stop: bool,
    pub lease_expires_at: i64,
    /// A gang member's heartbeat: how far its gang has formed (members wait until it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangState>,
}

/// One epoch's metrics: what a worker reports, and what is stored and served (with the attempt
/// that recorded it). A non-finite number is `null` (JSON has no NaN).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsReport {
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
    /// 1-based, at most the job's epochs.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(deserialize_with = "integer::exact")]
    pub epoch: i64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3.4e38))]
    pub lr: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3.4e38))]
    pub train_loss: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3.4e38))]
    pub test_loss: Option<f64>,
    /// Fractions in [0, 1].
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub accuracy: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub precision: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub recall: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub f1: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1e12))]
    pub images_per_sec: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1e9))]
    pub seconds: Option<f64>,
    /// Any other metric by name (a command job's own, e.g. `val_bleu`): kept per epoch like the
    /// named ones, for exports, curves and early stopping. At most [`MAX_EXTRA_METRICS`] names of
    /// letters, digits, `_`, `.`, `-` or `/` (at most 64 bytes).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, Option<f64>>,
    /// The run diverged at this epoch (a non-finite loss, sent as null): the report is stored but
    /// never judged by early stopping, and the worker ends the job `diverged`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diverged: bool,
}

/// One of the metrics a trainer's epoch may carry by name, and the largest value it may have (each
/// is at least 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamedMetric {
    pub name: &'static str,
    pub max: f64,
}

/// The named metrics, in the order exports list them: the one list of their names and bounds.
/// Losses and the lr reach up to the largest value an fp32 trainer can report.
pub const NAMED_METRICS: [NamedMetric; 9] = [
    NamedMetric {
        name: "lr",
        max: f32::MAX as f64,
    },
    NamedMetric {
        name: "train_loss",
        max: f32::MAX as f64,
    },
    NamedMetric {
        name: "test_loss",
        max: f32::MAX as f64,
    },
    NamedMetric {
        name: "accuracy",
        max: 1.0,
    },
    NamedMetric {
        name: "precision",
        max: 1.0,
    },
    NamedMetric {
        name: "recall",
        max: 1.0,
    },
    NamedMetric {
        name: "f1",
        max: 1.0,
    },
    NamedMetric {
        name: "images_per_sec",
        max: 1e12,
    },
    NamedMetric {
        name: "seconds",
        max: 1e9,
    },
];

/// Whether `name` is one of [`NAMED_METRICS`].
pub fn is_named_metric(name: &str) -> bool {
    NAMED_METRICS.iter().any(|m| m.name == name)
}

/// The names of [`NAMED_METRICS`], for messages.
pub fn named_metric_names() -> Vec<&'static str> {
    NAMED_METRICS.iter().map(|m| m.name).collect()
}

/// The named metrics' fields, in [`NAMED_METRICS`]' order: the one place that lists them, for
/// reading (`values`, no copy of the report) and for writing (`slots_mut`).
macro_rules! named_fields {
    ($($field:ident),* $(,)?) => {
        impl MetricsReport {
            fn values(&self) -> [Option<f64>; 9] {
                [$(self.$field),*]
            }

            fn slots_mut(&mut self) -> [&mut Option<f64>; 9] {
                [$(&mut self.$field),*]
            }
        }
    };
}
named_fields!(
    lr,
    train_loss,
    test_loss,
    accuracy,
    precision,
    recall,
    f1,
    images_per_sec,
    seconds,
);

impl MetricsReport {
    /// Each named metric with its value, in [`NAMED_METRICS`]' order.
    pub fn named(&self) -> [(NamedMetric, Option<f64>); 9] {
        let values = self.values();
        std::array::from_fn(|i| (NAMED_METRICS[i], values[i]))
    }

    /// Any metric by name: a named one, or one of its own (None: not reported).
    pub fn get(&self, name: &str) -> Option<f64> {
        match NAMED_METRICS.iter().position(|m| m.name == name) {
            Some(i) => self.values()[i],
            None => self.extra.get(name).copied().flatten(),
        }
    }

    /// The slot of a named metric; None for any other name.
    pub fn named_mut(&mut self, name: &str) -> Option<&mut Option<f64>> {
        let i = NAMED_METRICS.iter().position(|m| m.name == name)?;
        self.slots_mut().into_iter().nth(i)
    }
}

/// Most metrics of its own one epoch may report besides the named ones.
pub const MAX_EXTRA_METRICS: usize = 64;

/// Whether `name` may name a metric of its own (see [`MetricsReport::extra`]).
pub fn is_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
}

/// Where a log read or append starts: the attempt and the byte offset in its output (a query
/// string, so plain integers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
pub struct LogPosition {
    /// The attempt (reads: default the latest).
    #[serde(default)]
    pub attempt: Option<i64>,
    /// Byte offset in that attempt's output (default 0).
    #[serde(default)]
    pub offset: Option<i64>,
    /// Appends only: how many bytes just before `offset` the worker dropped without sending
    /// (output it could not deliver for long). An append that starts past the stored end by
    /// more than that is refused (422): a log never has a gap nobody declared.
    #[serde(default)]
    pub gap: Option<i64>,
}

/// Response headers of a log read: the offset of its first byte (later than asked when older
/// output was dropped to stay within the coordinator's `--max-log-mib`), the offset to read from
/// next, and the attempt read.
pub mod log_headers {
    /// Appends: the bytes of this chunk newly stored (0 for a retry of stored bytes).
    pub const STORED: &str = "x-log-stored";
    pub const OFFSET: &str = "x-log-offset";
    pub const NEXT: &str = "x-log-next";
    pub const ATTEMPT: &str = "x-log-attempt";
}

/// The answer to a metrics report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsReply {
    pub ok: bool,
    /// The early-stopping decision taken on this report (and on any before it): as
    /// [`HeartbeatReply::stop`]. Absent from older coordinators.
    #[serde(default)]
    pub stop: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FinishRequest {
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
    pub status: Outcome,
    /// The trainer's `summary.json`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub summary: Option<Value>,
    /// Why it failed (the coordinator keeps at most 8 KiB).
    pub error: Option<String>,
    /// A gang member other than node 0: `failed` ends the attempt for the whole gang, any other
    /// outcome says only that this member's part is over (node 0 finishes the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_rank: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseRequest {
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
    pub reason: Option<String>,
    /// A gang member: the whole gang's attempt is given back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_rank: Option<i64>,
}

/// A job whose state changed: the answer to finish and release, and an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobChange {
    pub job_id: i64,
    pub sweep_id: i64,
    pub status: JobStatus,
    #[serde(deserialize_with = "integer::exact")]
    pub attempt: i64,
}

/// Why a path a sweep names is not a relative path under a worker's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// Empty, or with a NUL byte.
    Empty,
    /// Absolute: it would name a place outside the worker's root.
    Absolute,
    /// With a `..` component: it would climb out of the root.
    Climbs,
}

impl PathRefusal {
    pub fn message(self) -> &'static str {
        match self {
            PathRefusal::Empty => "must be a non-empty relative path",
            PathRefusal::Absolute => "must be relative: it names a directory or file under the worker's own root (worker run --data-dir or --work-dir), never an absolute path",
            PathRefusal::Climbs => "must not contain `..`: it stays under the worker's root",
        }
    }
}

/// The one rule for paths in sweeps (`data_dir`, `init_from`): the coordinator refuses a sweep that
/// breaks it, and a worker refuses such a job again before joining the path to its own root.
pub fn check_relative_path(name: &str) -> Result<&std::path::Path, PathRefusal> {
    let p = std::path::Path::new(name);
    if name.is_empty() || name.contains('\0') {
        Err(PathRefusal::Empty)
    } else if p.is_absolute() {
        Err(PathRefusal::Absolute)
    } else if p
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Err(PathRefusal::Climbs)
    } else {
        Ok(p)
    }
}

/// What the scheduler reads from a job's settings, with `worker train`'s defaults (the worker's
/// tests check these against its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobShape {
    /// Per process.
    pub batch_size: i64,
    /// Data-parallel ranks on one worker.
    pub nproc_per_node: i64,
    /// Workers the job spans (a gang of `nnodes` workers, each with `nproc_per_node` ranks).
    pub nnodes: i64,
    pub epochs: i64,
}

impl JobShape {
    pub const DEFAULT_EPOCHS: i64 = train::defaults::EPOCHS as i64;
    pub const DEFAULT_BATCH_SIZE: i64 = train::defaults::BATCH_SIZE as i64;
    pub const DEFAULT_NPROC: i64 = train::defaults::NPROC_PER_NODE as i64;
    /// The trainer's default lr (the study's 1e-2).
    pub const DEFAULT_LR: f64 = train::defaults::LR;

    pub fn of(params: &Map<String, Value>) -> Self {
        let get = |k: &str, d: i64| params.get(k).and_then(Value::as_i64).unwrap_or(d);
        JobShape {
            batch_size: get("batch_size", Self::DEFAULT_BATCH_SIZE),
            nproc_per_node: get("nproc_per_node", Self::DEFAULT_NPROC),
            nnodes: get(train::NNODES, 1),
            epochs: get("epochs", Self::DEFAULT_EPOCHS),
        }
    }

    /// From a claim's params (any JSON; a non-object has the defaults).
    pub fn of_value(params: &Value) -> Self {
        params
            .as_object()
            .map(Self::of)
            .unwrap_or_else(|| Self::of(&Map::new()))
    }
}

#[cfg(test)]
mod tests {
    /// The protocol grows by optional fields: a worker reads a command with one it does not know.
    #[test]
    fn a_command_with_a_newer_field_still_reads() {
        let c: CommandSpec =
            serde_json::from_value(serde_json::json!({"argv": ["x"], "gpus_per_rank": 2})).unwrap();
        assert_eq!((c.argv, c.ranks), (vec!["x".to_string()], 1));
    }

    /// Each named metric's slot is the field of that name on the wire, and `get` reads it back.
    #[test]
    fn named_metrics_are_their_fields() {
        for (i, metric) in NAMED_METRICS.iter().enumerate() {
            let mut m = MetricsReport::default();
            *m.named_mut(metric.name).unwrap() = Some(i as f64 + 0.5);
            let wire = serde_json::to_value(&m).unwrap();
            assert_eq!(wire[metric.name], i as f64 + 0.5, "{}", metric.name);
            assert_eq!(m.get(metric.name), Some(i as f64 + 0.5));
            assert_eq!(m.named()[i], (*metric, Some(i as f64 + 0.5)));
        }
        let mut m = MetricsReport::default();
        assert!(m.named_mut("val_bleu").is_none());
        m.extra.insert("val_bleu".into(), Some(0.3));
        assert_eq!(m.get("val_bleu"), Some(0.3));
    }

    use super::*;

    #[test]
    fn statuses_are_their_stored_words() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(JobStatus::parse("done"), None);
        assert!(JobStatus::Cancelled.is_final() && !JobStatus::Running.is_final());
    }

    #[test]
    fn the_job_shape_falls_back_to_the_trainers_defaults() {
        let p = serde_json::json!({"batch_size": 64});
        assert_eq!(
            JobShape::of_value(&p),
            JobShape {
                batch_size: 64,
                nproc_per_node: 1,
                nnodes: 1,
                epochs: 300
            }
        );
        let gang = serde_json::json!({"nnodes": 4, "nproc_per_node": 8});
        assert_eq!(
            (
                JobShape::of_value(&gang).nnodes,
                JobShape::of_value(&gang).nproc_per_node
            ),
            (4, 8)
        );
    }

    #[test]
    fn integers_may_be_written_as_floats_without_a_fraction() {
        let h: HeartbeatRequest =
            serde_json::from_value(serde_json::json!({"attempt": 2.0})).unwrap();
        assert_eq!(h.attempt, 2);
        assert!(
            serde_json::from_value::<HeartbeatRequest>(serde_json::json!({"attempt": 2.5}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<HeartbeatRequest>(serde_json::json!({"attempt": 1e300}))
                .is_err()
        );
        let c: Capacity = serde_json::from_value(serde_json::json!({"ranks": 1})).unwrap();
        assert_eq!(c.max_batch_size, None);
        let c: Capacity =
            serde_json::from_value(serde_json::json!({"ranks": 1, "max_batch_size": 64.0}))
                .unwrap();
        assert_eq!(c.max_batch_size, Some(64));
    }

    #[test]
    fn paths_stay_under_the_root() {
        assert!(check_relative_path("mini/data").is_ok());
        assert_eq!(check_relative_path(""), Err(PathRefusal::Empty));
        assert_eq!(check_relative_path("a\0b"), Err(PathRefusal::Empty));
        assert_eq!(check_relative_path("/etc"), Err(PathRefusal::Absolute));
        assert_eq!(check_relative_path("a/../../b"), Err(PathRefusal::Climbs));
    }

    #[test]
    fn a_claim_from_an_older_coordinator_has_no_lease_length() {
        let c: Claim = serde_json::from_value(serde_json::json!(
            {"id": 1, "sweep_id": 2, "attempt": 1, "params": {}, "lease_expires_at": 5}
        ))
        .unwrap();
        assert_eq!(c.lease_ms, None);
    }
}
