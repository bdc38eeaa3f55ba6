//! Paths of the routes both sides use.
pub const SWEEPS: &str = "/api/sweeps";
pub const CLAIM: &str = "/api/jobs/claim";
/// Pending and running jobs over every sweep, read from counts kept per sweep.
pub const UNFINISHED: &str = "/api/jobs/unfinished";
/// Pending jobs counted by what they need of a worker (`[PendingShape]`), for an autoscaler.
pub const PENDING_SHAPES: &str = "/api/jobs/pending-shapes";

pub fn heartbeat(job: i64) -> String {
    format!("/api/jobs/{job}/heartbeat")
}

pub fn metrics(job: i64) -> String {
    format!("/api/jobs/{job}/metrics")
}

pub fn finish(job: i64) -> String {
    format!("/api/jobs/{job}/finish")
}

pub fn release(job: i64) -> String {
    format!("/api/jobs/{job}/release")
}

/// `PUT ...?attempt=N` uploads, `GET` downloads.
pub fn checkpoint(job: i64) -> String {
    format!("/api/jobs/{job}/checkpoint")
}

/// `POST ...?attempt=N&offset=K` appends a chunk of the attempt's output, `GET` reads it.
pub fn log(job: i64) -> String {
    format!("/api/jobs/{job}/log")
}

pub fn sweep(id: i64) -> String {
    format!("/api/sweeps/{id}")
}

pub fn job(id: i64) -> String {
    format!("/api/jobs/{id}")
}

/// `?format=markdown|csv|json` and the table's options.
pub fn results(sweep: i64) -> String {
    format!("/api/sweeps/{sweep}/results")
}

/// One of the study's figures, `NAME.png`.
pub fn figure(sweep: i64, name: &str) -> String {
    format!("/api/sweeps/{sweep}/figures/{name}.png")
}

/// Per-worker credentials: `POST` adds one (admin), `GET` lists them (admin).
pub const WORKERS: &str = "/api/workers";
/// An enrollment credential's holder mints a worker credential of its own.
pub const ENROLL: &str = "/api/workers/enroll";

/// `POST`: revoke a credential (admin): its leases end and it opens nothing from then on.
pub fn revoke_worker(name: &str) -> String {
    format!("/api/workers/{name}/revoke")
}

/// `POST`: a trial of an external sweep for the caller's own loop (`AskRequest` -> `Claim`, 204
/// while none is free, 410 once the sweep is done).
pub fn ask(sweep: i64) -> String {
    format!("/api/sweeps/{sweep}/ask")
}

/// `POST`: a trial's value(s) and end (`TellRequest`).
pub fn tell(sweep: i64) -> String {
    format!("/api/sweeps/{sweep}/tell")
}
