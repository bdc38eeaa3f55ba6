//! The worker protocol over HTTP (blocking; each job's supervisor thread makes its own calls).
use protocol::{
    routes, Capacity, ClaimRequest, FinishRequest, HeartbeatReply, HeartbeatRequest, Lease,
    MetricsReply, MetricsReport, Outcome, ReleaseRequest,
};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How a call failed, which decides what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 409: this attempt no longer holds the job. Stop its child at once.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The coordinator is unreachable or failing (network, 5xx): keep the write and retry later.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// Any other refusal (422, a bad reply): retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// 401, 403 or 404: the worker's token, its role or its `--server` address is wrong; nothing
    /// it sends will be taken until that is fixed.
    #[error("{code} {body}")]
    Denied { code: u16, body: String },
}

pub use protocol::Claim;

#[derive(Clone, Debug)]
pub struct Coordinator {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Coordinator {
    pub fn new(base: &str, token: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(60))
            .build();
        Coordinator {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent,
        }
    }

    fn classify(e: ureq::Error) -> CallError {
        match e {
            ureq::Error::Status(409, r) => {
                CallError::LeaseLost(r.into_string().unwrap_or_default())
            }
            ureq::Error::Status(code, r) if code >= 500 => {
                CallError::Unavailable(format!("{code} {}", r.into_string().unwrap_or_default()))
            }
            ureq::Error::Status(code @ (401 | 403 | 404), r) => CallError::Denied {
                code,
                body: r.into_string().unwrap_or_default(),
            },
            ureq::Error::Status(code, r) => {
                CallError::Refused(format!("{code} {}", r.into_string().unwrap_or_default()))
            }
            ureq::Error::Transport(t) => CallError::Unavailable(t.to_string()),
        }
    }

    /// A request to `path` (with its query) on the coordinator, with this worker's token.
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// A write of a held lease: the request with the claim's secret.
    fn write(&self, method: &str, path: &str, lease: Lease) -> ureq::Request {
        self.request(method, path)
            .set(protocol::LEASE_SECRET_HEADER, lease.secret)
    }

    fn post(&self, path: &str, body: &impl Serialize) -> Result<Option<Value>, CallError> {
        Self::answer(self.request("POST", path).send_json(body))
    }

    fn post_as(
        &self,
        path: &str,
        lease: Lease,
        body: &impl Serialize,
    ) -> Result<Option<Value>, CallError> {
        Self::answer(self.write("POST", path, lease).send_json(body))
    }

    fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<Option<Value>, CallError> {
        let r = r.map_err(Self::classify)?;
        if r.status() == 204 {
            return Ok(None);
        }
        r.into_json()
            .map(Some)
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }

    /// Mints a worker credential with this coordinator's token (an enrollment credential).
    pub fn enroll(
        &self,
        suffix: &str,
    ) -> Result<protocol::credentials::IssuedCredential, CallError> {
        let body = protocol::credentials::EnrollRequest {
            suffix: suffix.to_string(),
        };
        let v = self
            .post(routes::ENROLL, &body)?
            .ok_or_else(|| CallError::Refused("an empty answer to an enrollment".into()))?;
        serde_json::from_value(v).map_err(|e| CallError::Refused(e.to_string()))
    }

    /// The oldest pending job that fits `capacity`, or None.
    pub fn claim(
        &self,
        worker: &str,
        ranks: usize,
        max_batch_size: Option<i64>,
        accepts_commands: bool,
        rendezvous: Option<protocol::Rendezvous>,
        deadline: Option<i64>,
    ) -> Result<Option<Claim>, CallError> {
        let body = ClaimRequest {
            worker: worker.to_string(),
            capacity: Some(Capacity {
                ranks: ranks as i64,
                max_batch_size,
            }),
            accepts_commands,
            rendezvous,
            deadline,
        };
        match self.post(routes::CLAIM, &body)? {
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| CallError::Refused(e.to_string())),
            None => Ok(None),
        }
    }

    /// What `/healthz` answers (the coordinator's says `ok`), without the token: whether `--server`
    /// names a coordinator at all.
    pub fn healthz(&self) -> Result<String, CallError> {
        self.agent
            .get(&format!("{}/healthz", self.base))
            .call()
            .map_err(Self::classify)?
            .into_string()
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Jobs pending or running across all sweeps (for `--exit-when-idle`).
    pub fn unfinished_jobs(&self) -> Result<i64, CallError> {
        let n: protocol::views::Unfinished = self
            .request("GET", routes::UNFINISHED)
            .call()
            .map_err(Self::classify)?
            .into_json()
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        Ok(n.pending + n.running)
    }

    /// Renews the lease; the reply says whether the job was cancelled.
    pub fn heartbeat(&self, lease: Lease) -> Result<HeartbeatReply, CallError> {
        let body = HeartbeatRequest {
            attempt: lease.attempt,
            node_rank: lease.node_rank,
        };
        let v = self
            .post_as(&routes::heartbeat(lease.job), lease, &body)?
            .ok_or_else(|| CallError::Refused("empty heartbeat reply".into()))?;
        serde_json::from_value(v).map_err(|e| CallError::Refused(format!("heartbeat reply: {e}")))
    }

    /// Reports one epoch; the reply says whether the sweep's early-stopping rule stopped the job.
    pub fn metrics(&self, lease: Lease, m: &MetricsReport) -> Result<MetricsReply, CallError> {
        let v = self
            .post_as(&routes::metrics(lease.job), lease, m)?
            .ok_or_else(|| CallError::Refused("empty metrics reply".into()))?;
        serde_json::from_value(v).map_err(|e| CallError::Refused(format!("metrics reply: {e}")))
    }

    pub fn finish(
        &self,
        lease: Lease,
        status: Outcome,
        summary: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), CallError> {
        let body = FinishRequest {
            attempt: lease.attempt,
            status,
            summary: summary.cloned(),
            error: error.map(str::to_string),
            node_rank: lease.node_rank,
        };
        self.post_as(&routes::finish(lease.job), lease, &body)
            .map(|_| ())
    }

    pub fn release(&self, lease: Lease, reason: &str) -> Result<(), CallError> {
        let body = ReleaseRequest {
            attempt: lease.attempt,
            reason: Some(reason.to_string()),
            node_rank: lease.node_rank,
        };
        self.post_as(&routes::release(lease.job), lease, &body)
            .map(|_| ())
    }

    /// Appends a chunk of the attempt's output at `offset` (a retry of it is stored once),
    /// declaring the `gap` bytes before it that were dropped.
    pub fn append_log(
        &self,
        lease: Lease,
        offset: u64,
        gap: u64,
        data: &[u8],
    ) -> Result<(), CallError> {
        let path = format!(
            "{}?attempt={}&offset={offset}&gap={gap}",
            routes::log(lease.job),
            lease.attempt
        );
        self.write("POST", &path, lease)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(data)
            .map_err(Self::classify)?;
        Ok(())
    }

    /// Uploads `file`, saying which epoch it holds when `epoch_of` can read it from the open file.
    pub fn upload_checkpoint(
        &self,
        lease: Lease,
        file: &Path,
        epoch_of: impl FnOnce(&mut std::fs::File) -> Option<i64>,
    ) -> Result<(), CallError> {
        // Opened before sending: the trainer replaces the file by rename, so this handle stays whole.
        let mut f = std::fs::File::open(file)
            .map_err(|e| CallError::Refused(format!("{}: {e}", file.display())))?;
        let epoch = epoch_of(&mut f).map_or(String::new(), |e| format!("&epoch={e}"));
        let path = format!(
            "{}?attempt={}{epoch}",
            routes::checkpoint(lease.job),
            lease.attempt
        );
        self.write("PUT", &path, lease)
            .set("Content-Type", "application/octet-stream")
            .send(f)
            .map_err(Self::classify)?;
        Ok(())
    }

    /// Fetches the job's last checkpoint into `dest`; false when it has none.
    pub fn download_checkpoint(&self, lease: Lease, dest: &Path) -> Result<bool, CallError> {
        let r = match self
            .write("GET", &routes::checkpoint(lease.job), lease)
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => return Ok(false),
            Err(e) => return Err(Self::classify(e)),
        };
        let tmp = crate::checkpoint::tmp_path(dest);
        let mut f = std::fs::File::create(&tmp).map_err(|e| CallError::Refused(e.to_string()))?;
        std::io::copy(&mut r.into_reader(), &mut f)
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        std::fs::rename(&tmp, dest).map_err(|e| CallError::Refused(e.to_string()))?;
        Ok(true)
    }
}

/// An epoch as the protocol carries it: non-finite numbers (a diverged run's loss) become null.
pub fn report(attempt: i64, m: &crate::metrics::EpochMetrics) -> MetricsReport {
    let finite = |x: f64| x.is_finite().then_some(x);
    MetricsReport {
        attempt,
        epoch: i64::from(m.epoch),
        lr: finite(m.lr),
        train_loss: finite(m.train_loss),
        test_loss: finite(m.test_loss),
        accuracy: finite(m.accuracy),
        precision: finite(m.precision),
        recall: finite(m.recall),
        f1: finite(m.f1),
        images_per_sec: finite(m.images_per_sec),
        seconds: finite(m.seconds),
        extra: Default::default(),
        diverged: !m.train_loss.is_finite(),
    }
}
