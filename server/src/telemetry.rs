//! `GET /metrics`: the coordinator's counters, the jobs by status and the request latency, kept and
//! encoded (OpenMetrics text) by the `prometheus-client` crate.
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the request-latency histogram, in seconds.
pub const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The content type of [`Telemetry::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// Cheap handles (each metric is an `Arc` inside) and the registry that encodes them.
#[derive(Debug)]
pub struct Telemetry {
    /// Jobs handed out.
    pub claims: Counter,
    /// Claims answered with nothing to do.
    pub empty_claims: Counter,
    /// Leases that ran out.
    pub lease_expiries: Counter,
    /// TPE trials drawn when claimed.
    pub trials_drawn: Counter,
    /// Gangs of multi-node jobs dissolved because they did not form in time.
    pub gangs_dissolved: Counter,
    /// Anonymous or dashboard reads refused (too many at once, or too long).
    pub reads_refused: Counter,
    /// Bytes of stored checkpoints and of kept logs, against the global quotas.
    pub checkpoint_bytes: Gauge,
    pub log_bytes: Gauge,
    latency: Histogram,
    jobs: Family<StatusLabel, Gauge>,
    registry: Registry,
}

impl Default for Telemetry {
    fn default() -> Self {
        let t = Telemetry {
            claims: Counter::default(),
            empty_claims: Counter::default(),
            lease_expiries: Counter::default(),
            trials_drawn: Counter::default(),
            gangs_dissolved: Counter::default(),
            reads_refused: Counter::default(),
            checkpoint_bytes: Gauge::default(),
            log_bytes: Gauge::default(),
            latency: Histogram::new(BUCKETS),
            jobs: Family::default(),
            registry: Registry::default(),
        };
        t.register()
    }
}

impl Telemetry {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        // Counters are exposed with the `_total` suffix the format requires.
        r.register("sweep_claims", "Jobs handed out", self.claims.clone());
        r.register(
            "sweep_empty_claims",
            "Claims answered with nothing to do",
            self.empty_claims.clone(),
        );
        r.register(
            "sweep_lease_expiries",
            "Leases that ran out",
            self.lease_expiries.clone(),
        );
        r.register(
            "sweep_trials_drawn",
            "TPE trials drawn when claimed",
            self.trials_drawn.clone(),
        );
        r.register(
            "sweep_gangs_dissolved",
            "Gangs of multi-node jobs dissolved because they did not form in time",
            self.gangs_dissolved.clone(),
        );
        r.register(
            "sweep_reads_refused",
            "Anonymous or dashboard reads refused: too many at once, or too long",
            self.reads_refused.clone(),
        );
        r.register(
            "sweep_checkpoint_bytes",
            "Bytes of stored checkpoints (the global quota: serve --max-checkpoints-gib)",
            self.checkpoint_bytes.clone(),
        );
        r.register(
            "sweep_log_bytes",
            "Bytes of kept job logs (the global quota: serve --max-logs-gib)",
            self.log_bytes.clone(),
        );
        r.register("sweep_jobs", "Jobs by status", self.jobs.clone());
        r.register(
            "sweep_http_request_duration_seconds",
            "Request latency",
            self.latency.clone(),
        );
        self
    }

    /// One request's latency.
    pub fn observe(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The exposition, with the jobs by status as counted now (every status, zero included).
    pub fn render(&self, jobs_by_status: &serde_json::Map<String, serde_json::Value>) -> String {
        for status in protocol::JobStatus::ALL.map(protocol::JobStatus::as_str) {
            let n = jobs_by_status
                .get(status)
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            self.jobs
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .set(n);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
