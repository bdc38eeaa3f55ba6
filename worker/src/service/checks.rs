//! What keeps a worker that cannot work from spending a sweep's attempts: a check of this machine
//! before the first claim, a circuit breaker over jobs that fail before their first epoch, and
//! the coordinator's refusals read as what to fix (a wrong token, role or address ends the worker;
//! an unreachable coordinator is retried with backoff, and said so).
use super::coordinator::{CallError, Coordinator};
use super::job::{last_error, End};
use super::RunArgs;
use anyhow::{bail, Context, Result};
use protocol::Outcome;
use std::path::Path;
use std::time::{Duration, Instant};

/// `--server` as given, or with `http://` when it names no scheme (`127.0.0.1:8080`); another
/// scheme, or none that parses, is refused with the form it takes.
pub fn parse_server(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(url),
        _ => Err(format!(
            "{s:?} is not the coordinator's address: give its root URL, e.g. http://127.0.0.1:8080"
        )),
    }
}

/// Before the first claim: the work directory is writable, the command root (for command jobs)
/// exists, and the data root holds CIFAR-10 or could be filled. Err: what to fix, and the worker
/// does not start. What only a job can tell (a sweep naming a data directory below the root)
/// is left to the job, whose failure for want of data gives it back (see [`Breaker`]).
pub fn preflight(a: &RunArgs) -> Result<()> {
    let probe = a
        .work_dir
        .join(format!(".write-test-{}", std::process::id()));
    std::fs::create_dir_all(&a.work_dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "--work-dir {} is not writable: jobs' outputs are written there",
                absolute(&a.work_dir)
            )
        })?;
    if a.allow_commands && !a.command_root.is_dir() {
        bail!(
            "--command-root {} is not a directory: command jobs run under it",
            absolute(&a.command_root)
        );
    }
    check_data_dir(a)?;
    check_data(a);
    Ok(())
}

/// The data root: a `--data-dir` that does not exist is a slip (refused); no CIFAR-10 in the root
/// is said at once, with where the default points, since jobs that need it will try to download
/// it (and a worker that runs only synthetic or command jobs needs none).
fn check_data(a: &RunArgs) {
    let default = crate::config::TrainConfig::default().data_dir;
    let root = a.data_dir.clone().unwrap_or(default);
    if crate::data::has_cifar10(&root) {
        tracing::info!(data_dir = %absolute(&root), "CIFAR-10 found");
        return;
    }
    let given = match &a.data_dir {
        Some(_) => "--data-dir",
        None => "the default data directory (relative to where the worker starts; give --data-dir)",
    };
    tracing::warn!(
        data_dir = %absolute(&root),
        data_url = %a.data_url,
        "no CIFAR-10 in {given}: jobs that train on it will download it from --data-url, and are \
         given back if they cannot (`worker fetch-data --data-dir DIR` fetches it beforehand)"
    );
}

/// `--data-dir` names a directory that exists (an empty one is filled by the first job).
fn check_data_dir(a: &RunArgs) -> Result<()> {
    match &a.data_dir {
        Some(dir) if !dir.is_dir() => bail!(
            "--data-dir {} does not exist: give the directory that holds CIFAR-10's \
             data_batch_1..5.bin and test_batch.bin (or create it empty, and jobs download the \
             data into it from --data-url)",
            absolute(dir)
        ),
        _ => Ok(()),
    }
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Counts jobs in a row that failed before their first epoch; at `--max-early-failures` the worker
/// stops claiming and says why (0: never). A job that could not run here at all stops it at once.
#[derive(Debug, Default)]
pub struct Breaker {
    limit: u32,
    in_a_row: u32,
}

impl Breaker {
    pub fn new(limit: u32) -> Self {
        Breaker { limit, in_a_row: 0 }
    }

    /// Takes a job's end (and the epochs it reached); Some(why the worker stops) once tripped. A
    /// job this machine could not run at all trips it at once: the next would fail the same way,
    /// and each try spends one of the job's free releases.
    pub fn record(&mut self, end: &End, epoch: u32) -> Option<String> {
        let why = match end {
            End::WorkerFault(why) => {
                return Some(format!(
                    "this machine cannot run the jobs it is given: {why}. The job went back to \
                     pending with no attempt spent; fix that and start the worker again"
                ))
            }
            End::Reported(Outcome::Failed, error) if epoch == 0 => {
                error.clone().unwrap_or_default()
            }
            // Given back or taken away: says nothing of this worker either way.
            End::Released(_) | End::Lost(_) => return None,
            _ => {
                self.in_a_row = 0;
                return None;
            }
        };
        self.in_a_row += 1;
        (self.limit > 0 && self.in_a_row >= self.limit).then(|| {
            format!(
                "{} jobs in a row failed before their first epoch on this worker (the last: {}); \
                 fix that and start the worker again (--max-early-failures sets how many stop it, \
                 0 never)",
                self.in_a_row,
                last_error(std::slice::from_ref(&why))
            )
        })
    }
}

/// The worker's contact with its coordinator: backoff while it is unreachable (said once after a
/// minute of never reaching it), and refusals that no retry mends turned into what to fix.
#[derive(Debug)]
pub struct Contact {
    started: Instant,
    reached: bool,
    backoff: Duration,
    warned: bool,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a worker that never reached its coordinator waits before saying so.
const NEVER_REACHED: Duration = Duration::from_secs(60);

impl Default for Contact {
    fn default() -> Self {
        Contact {
            started: Instant::now(),
            reached: false,
            backoff: FIRST_BACKOFF,
            warned: false,
        }
    }
}

impl Contact {
    /// A call went through: the backoff starts over.
    pub fn reached(&mut self) {
        self.reached = true;
        self.backoff = FIRST_BACKOFF;
    }

    /// A call failed. Ok(how long to wait before the next claim) when a retry may help;
    /// Err(what to fix) when it cannot.
    pub fn failed(&mut self, coord: &Coordinator, e: &CallError) -> Result<Duration, String> {
        if let CallError::Denied { code, body } = e {
            return Err(diagnose(coord, *code, body));
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if !self.reached && !self.warned && self.started.elapsed() >= NEVER_REACHED {
            self.warned = true;
            tracing::warn!(
                server = coord.base(),
                error = %e,
                "never reached the coordinator since this worker started {} s ago: is `server \
                 serve` running there, and are the host and port those it printed?",
                self.started.elapsed().as_secs()
            );
        } else {
            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "claim failed");
        }
        Ok(wait)
    }
}

/// What a 401, 403 or 404 to a claim means for the person starting the worker. `/healthz` tells a
/// wrong `--server` (nothing of ours answers there) from a wrong token.
fn diagnose(coord: &Coordinator, code: u16, body: &str) -> String {
    let server = coord.base();
    let said = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let ours = coord.healthz().is_ok_and(|h| h.trim() == "ok");
    if !ours {
        return format!(
            "{server} is not a coordinator's root (a claim there answered {code} {said}): give \
             --server the address `server serve` printed, such as http://127.0.0.1:8080 (no path, \
             no /api)"
        );
    }
    match code {
        401 => format!(
            "the coordinator at {server} refused this worker's token (401 {said}): give --token \
             (or SWEEP_TOKEN) a worker credential (`server worker add NAME` prints one) or the \
             shared worker token in <db>.worker-token beside the coordinator's database"
        ),
        403 => format!(
            "the coordinator at {server} will not take claims with this token (403 {said}): a \
             worker needs a worker credential (`server worker add NAME`) or <db>.worker-token, \
             not the admin token"
        ),
        _ => format!(
            "the coordinator at {server} has no claim route (404 {said}): is it the same version \
             as this worker?"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_is_read_as_http() {
        assert_eq!(
            parse_server("127.0.0.1:18431"),
            Ok("http://127.0.0.1:18431".into())
        );
        assert_eq!(
            parse_server("https://sweeps.lab/"),
            Ok("https://sweeps.lab".into())
        );
        assert!(parse_server("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_server("").is_err());
    }

    #[test]
    fn the_breaker_counts_early_failures_in_a_row_and_any_success_resets_it() {
        let mut b = Breaker::new(2);
        let failed = End::Reported(
            Outcome::Failed,
            Some("trainer exited with code 1:\nboom".into()),
        );
        assert_eq!(b.record(&failed, 0), None);
        assert_eq!(
            b.record(&End::Reported(Outcome::Completed, None), 3),
            None,
            "a success resets the count"
        );
        assert_eq!(
            b.record(&failed, 2),
            None,
            "failed after an epoch: the job's own"
        );
        assert_eq!(b.record(&End::Released("shutdown".into()), 0), None);
        assert_eq!(b.record(&failed, 0), None);
        let why = b.record(&failed, 0).expect("two in a row trip it");
        assert!(
            why.contains("2 jobs in a row") && why.contains("boom"),
            "{why}"
        );
        let mut b = Breaker::new(3);
        let why = b.record(&End::WorkerFault("no CIFAR-10 in /d".into()), 0);
        assert!(
            why.is_some_and(|w| w.contains("no CIFAR-10 in /d")),
            "a job this machine cannot run trips it at once"
        );
        let mut never = Breaker::new(0);
        for _ in 0..10 {
            assert_eq!(never.record(&failed, 0), None);
        }
    }
}
