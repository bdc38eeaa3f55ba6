//! What the coordinator tells whoever listens (the dashboard's event stream): job state changes,
//! new metrics, sweeps' ends, log growth, each published after its write has committed. A domain
//! type: `lifecycle` publishes, `http::events` streams.
use protocol::{JobChange, MetricsReport};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Job(JobChange),
    Metrics {
        job_id: i64,
        sweep_id: i64,
        #[serde(flatten)]
        metrics: MetricsReport,
    },
    Sweep {
        sweep_id: i64,
        status: protocol::SweepStatus,
    },
    /// A job's log grew: its attempt's output now ends at `next` (read it from the log route).
    Log {
        job_id: i64,
        sweep_id: i64,
        attempt: i64,
        next: i64,
    },
}
