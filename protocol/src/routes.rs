//! Paths of the routes both sides use.
pub const SWEEPS: &str = "/api/sweeps";
pub const CLAIM: &str = "/api/jobs/claim";
/// Pending and running jobs over every sweep, read from counts kept per sweep.
pub const UNFINISHED: &str = "/api/jobs/unfinished";

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
