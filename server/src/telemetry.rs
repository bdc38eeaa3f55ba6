//! Counters for `GET /metrics` (Prometheus text format), kept as atomics in the app state.
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the request-latency histogram, in seconds.
pub const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Debug, Default)]
pub struct Telemetry {
    pub claims: AtomicU64,
    pub empty_claims: AtomicU64,
    pub lease_expiries: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Telemetry {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn render(&self, jobs_by_status: &serde_json::Map<String, serde_json::Value>) -> String {
        let mut s = String::new();
        s.push_str("# HELP sweep_jobs Jobs by status.\n# TYPE sweep_jobs gauge\n");
        for status in protocol::JobStatus::ALL.map(protocol::JobStatus::as_str) {
            let n = jobs_by_status
                .get(status)
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            s.push_str(&format!("sweep_jobs{{status=\"{status}\"}} {n}\n"));
        }
        let counter = |s: &mut String, name: &str, help: &str, v: &AtomicU64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        };
        counter(
            &mut s,
            "sweep_claims_total",
            "Jobs handed out.",
            &self.claims,
        );
        counter(
            &mut s,
            "sweep_empty_claims_total",
            "Claims answered with nothing to do.",
            &self.empty_claims,
        );
        counter(
            &mut s,
            "sweep_lease_expiries_total",
            "Leases that ran out.",
            &self.lease_expiries,
        );
        s.push_str("# HELP sweep_http_request_duration_seconds Request latency.\n");
        s.push_str("# TYPE sweep_http_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            s.push_str(&format!(
                "sweep_http_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        s.push_str(&format!(
            "sweep_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        s.push_str(&format!(
            "sweep_http_request_duration_seconds_sum {}\nsweep_http_request_duration_seconds_count {count}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        s
    }
}
