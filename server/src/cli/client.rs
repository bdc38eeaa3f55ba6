//! `server submit | status | export`: thin terminal clients of the REST API.
use anyhow::{bail, Context, Result};
use protocol::routes;
use serde_json::{Map, Value};
use std::path::Path;

use protocol::views::{JobDetail, SweepDetail, SweepRow};

#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        if !res.status().is_success() {
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            // A 401 says where the token comes from, which is what a newcomer is missing.
            let hint = match status {
                reqwest::StatusCode::UNAUTHORIZED => {
                    " (give the admin token: the SWEEP_TOKEN variable or --token; a coordinator \
                     that generated one wrote it to <db>.token beside its database)"
                }
                _ => "",
            };
            bail!(
                "{status}: {}{hint}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
            );
        }
        Ok(res)
    }

    pub async fn submit(&self, file: &Path) -> Result<protocol::views::Created> {
        self.send(self.submit_request(file, "")?)
            .await?
            .json()
            .await
            .context("unexpected answer to a submit")
    }

    /// The jobs `file` would make, checked by the coordinator, nothing stored.
    pub async fn dry_run(&self, file: &Path) -> Result<protocol::views::DryRun> {
        self.send(self.submit_request(file, "?dry_run=true")?)
            .await?
            .json()
            .await
            .context("unexpected answer to a dry run")
    }

    fn submit_request(&self, file: &Path, query: &str) -> Result<reqwest::RequestBuilder> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let ctype = if file.extension().is_some_and(|e| e == "json") {
            "application/json"
        } else {
            "application/toml"
        };
        Ok(self
            .http
            .post(format!("{}{}{query}", self.base, routes::SWEEPS))
            .header("content-type", ctype)
            .body(text))
    }

    pub async fn post_json<B: serde::Serialize>(&self, path: &str, body: &B) -> Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        Ok(self.send(req).await?.json().await?)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .json()
            .await?)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .text()
            .await?)
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .bytes()
            .await?
            .to_vec())
    }

    /// Writes the job's log to `out` from the start; with `follow`, goes on (polling once a
    /// second) until the job has ended and everything it wrote is out.
    pub async fn logs(
        &self,
        job: i64,
        attempt: Option<i64>,
        follow: bool,
        out: &mut impl std::io::Write,
    ) -> Result<()> {
        use protocol::log_headers;
        let chosen = attempt.is_some();
        let mut attempt = attempt;
        let (mut offset, mut ended) = (0i64, false);
        // Bytes held back from one read to the next: a character or a CR LF cut by a read's end.
        let mut carry: Vec<u8> = vec![];
        loop {
            let mut path = format!("{}?offset={offset}", protocol::routes::log(job));
            if let Some(a) = attempt {
                path.push_str(&format!("&attempt={a}"));
            }
            let res = self
                .send(self.http.get(format!("{}{path}", self.base)))
                .await?;
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            let next = header(log_headers::NEXT).unwrap_or(offset);
            attempt = attempt.or(header(log_headers::ATTEMPT));
            carry.extend_from_slice(&res.bytes().await?);
            let (shown, used) = render(&carry, false);
            out.write_all(&shown)?;
            carry.drain(..used);
            out.flush()?;
            if next > offset {
                offset = next;
                continue; // more may be there already
            }
            if !follow || ended {
                out.write_all(&render(&carry, true).0)?;
                out.flush()?;
                return Ok(());
            }
            // Caught up: the job's state, then one more read. Once it has ended, a read after
            // learning so has all it wrote.
            let current;
            (ended, current) = self.job_state(job).await?;
            if ended {
                continue;
            }
            if !chosen && attempt.is_some_and(|a| current > a) {
                // A retry (or a resume elsewhere): follow the new attempt from its start.
                writeln!(out, "--- attempt {current} ---")?;
                (attempt, offset) = (Some(current), 0);
                continue;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Whether the job has ended, and its current attempt.
    async fn job_state(&self, job: i64) -> Result<(bool, i64)> {
        let j: JobDetail = self.get(&protocol::routes::job(job)).await?;
        Ok((j.job.status.is_final(), j.job.attempt))
    }

    /// Pending jobs by what they need of a worker allocation (for the autoscaler).
    pub async fn pending_shapes(&self) -> Result<Vec<protocol::PendingShape>> {
        self.get(routes::PENDING_SHAPES).await
    }

    /// A read model of the API, typed as the server defines it.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let value = self.get_json(path).await?;
        serde_json::from_value(value).with_context(|| format!("unexpected answer from {path}"))
    }

    /// `server status --watch`: the status redrawn every `every` (on a terminal the screen is
    /// cleared first; into a pipe a frame is written only when it changed). Watching one sweep
    /// ends once it has (finished, or cancelled with nothing left running); all sweeps, never.
    pub async fn watch(
        &self,
        sweep: Option<i64>,
        every: std::time::Duration,
        tty: bool,
        out: &mut impl std::io::Write,
    ) -> Result<()> {
        let mut last = String::new();
        loop {
            let (frame, over) = match sweep {
                None => (self.status(None).await?, false),
                Some(id) => {
                    let d: SweepDetail = self.get(&routes::sweep(id)).await?;
                    let over = match d.sweep.status {
                        protocol::SweepStatus::Finished => true,
                        protocol::SweepStatus::Cancelled => d.sweep.running == 0,
                        _ => false,
                    };
                    (sweep_status(&d), over)
                }
            };
            if tty {
                let when = clock_utc();
                write!(
                    out,
                    "\x1b[2J\x1b[H{when}  every {} s, Ctrl-C stops\n\n{frame}",
                    every.as_secs_f64()
                )?;
            } else if frame != last {
                writeln!(out, "{frame}")?;
            }
            out.flush()?;
            last = frame;
            if over {
                return Ok(());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One line per sweep, or one line per job of a sweep.
    pub async fn status(&self, sweep: Option<i64>) -> Result<String> {
        let mut out = String::new();
        match sweep {
            None => {
                let sweeps: Vec<SweepRow> = self.get(routes::SWEEPS).await?;
                for s in sweeps {
                    // A TPE sweep's progress on the same line, so one grep finds all of a sweep.
                    let tpe = s.tpe.as_ref().map(|t| format!("; {}", tpe_line(t)));
                    out.push_str(&format!(
                        "{:>4}  {:<28} {:<10} {}; {}/{} epochs{}\n",
                        s.id,
                        s.name,
                        s.status.as_str(),
                        job_counts(&s),
                        s.epochs_spent,
                        s.epochs_budget,
                        tpe.unwrap_or_default()
                    ));
                }
            }
            Some(id) => {
                let d: SweepDetail = self.get(&routes::sweep(id)).await?;
                out.push_str(&sweep_status(&d));
            }
        }
        Ok(out)
    }
}

/// A sweep and its jobs, a line each: the parameters that vary between its jobs first (those all
/// share are said once, above), then the job's state.
pub fn sweep_status(d: &SweepDetail) -> String {
    let s = &d.sweep;
    let mut out = format!(
        "sweep {} {} ({}): {}\n",
        s.id,
        s.name,
        s.status,
        job_counts(s)
    );
    if let Some(t) = &s.tpe {
        out.push_str(&format!("  {}\n", tpe_line(t)));
    }
    let (varying, shared) = split_params(&d.jobs);
    if !shared.is_empty() {
        out.push_str(&format!("  every job: {shared}\n"));
    }
    if let Some(hint) = pending_hint(d) {
        out.push_str(&format!("  {hint}\n"));
    }
    let width = d
        .jobs
        .iter()
        .map(|j| param_text(&j.params, &varying).chars().count())
        .max()
        .unwrap_or(0);
    for j in &d.jobs {
        let acc = j
            .latest
            .as_ref()
            .and_then(|m| m.accuracy)
            .map(|a| format!("{:.2}%", 100.0 * a))
            .unwrap_or("-".into());
        // A command job that names no epochs runs any number of them: no total to count to.
        let epoch = match j.epochs {
            protocol::train::MAX_EPOCHS => format!("epoch {}", j.epoch),
            n => format!("epoch {}/{n}", j.epoch),
        };
        out.push_str(&format!(
            "  job {:>5}  {:<width$}  {:<10} attempt {} {epoch:<14} acc {acc:>7}\n",
            j.id,
            param_text(&j.params, &varying),
            j.status.as_str(),
            j.attempt,
        ));
    }
    out
}

/// "6 jobs: 2 pending, 1 running, 3 completed, ...": a sweep's jobs by status.
fn job_counts(s: &SweepRow) -> String {
    format!(
        "{} jobs: {} pending, {} running, {} completed, {} diverged, {} failed, {} cancelled, {} pruned",
        s.total, s.pending, s.running, s.completed, s.diverged, s.failed, s.cancelled, s.pruned
    )
}

/// `server submit --dry-run`: the count, the warnings, and a line per job (its varying parameters).
pub fn dry_run_text(plan: &protocol::views::DryRun) -> String {
    let mut out = format!(
        "{}: {} job(s); nothing was stored (submit without --dry-run to run it)\n",
        plan.name, plan.jobs
    );
    for w in &plan.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let shown = match plan.varying.is_empty() {
        true => plan
            .params
            .first()
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
        false => plan.varying.clone(),
    };
    for (i, p) in plan.params.iter().enumerate() {
        out.push_str(&format!("  {:>4}  {}\n", i + 1, param_text(p, &shown)));
    }
    if plan.params.len() < plan.jobs {
        out.push_str(&format!(
            "  ... and {} more (a TPE sweep draws its trials as it runs)\n",
            plan.jobs - plan.params.len()
        ));
    }
    out
}

/// The time of day (UTC) a watched frame was drawn.
fn clock_utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02} UTC", t.hour(), t.minute(), t.second())
}

/// The parameter names whose values differ between jobs, and the text of those all share.
fn split_params(jobs: &[protocol::views::JobRow]) -> (Vec<String>, String) {
    let points: Vec<&Map<String, Value>> =
        jobs.iter().filter_map(|j| j.params.as_object()).collect();
    let (varying, shared) = crate::sweep::split_keys(&points);
    let shared_text = match jobs.first() {
        Some(first) => param_text(&first.params, &shared),
        None => String::new(),
    };
    (varying, shared_text)
}

/// `batch_size=64 lr=0.01`: the named parameters of one job, in the order given.
fn param_text(params: &Value, names: &[String]) -> String {
    names
        .iter()
        .filter_map(|k| {
            params.get(k).map(|v| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a sweep whose jobs all wait may wait for ever: a command sweep is taken only by workers
/// started with `--allow-commands`; any sweep needs a worker at all.
fn pending_hint(d: &SweepDetail) -> Option<String> {
    let s = &d.sweep;
    if s.pending == 0 || s.pending < s.total {
        return None;
    }
    if let Some(j) = d.jobs.iter().find(|j| j.attempt > 0) {
        return Some(format!(
            "all pending: job {} was claimed {} time(s) and given back; its attempts say why \
             (the dashboard's #/jobs/{}, or GET /api/jobs/{})",
            j.id, j.attempt, j.id, j.id
        ));
    }
    Some(match d.spec.get("command").is_some_and(|c| !c.is_null()) {
        true => "all pending: command jobs run only on a worker started with \
                 `worker run --allow-commands` (docs/command-jobs.md)"
            .into(),
        false => "all pending: no worker has claimed one yet (`worker run --server URL --token \
                  WORKER_TOKEN`, docs/running.md)"
            .into(),
    })
}

/// "TPE: 12 of 40 trials drawn; best accuracy (max) 81.23%, job 17" (a fraction in percent, as
/// everywhere; another metric to 6 decimals); with several objectives "NSGA-II: 12 of 40 trials
/// drawn; front of 5 on accuracy (max), seconds (min)".
fn tpe_line(t: &protocol::views::TpeProgress) -> String {
    let method = match t.method.as_str() {
        "nsga2" => "NSGA-II",
        "random" => "random",
        "pbt" => "PBT",
        _ => "TPE",
    };
    if t.method == "pbt" {
        // A population trains at once: every member is drawn at submit.
        let best = match (t.best_value, t.best_job) {
            (Some(v), Some(job)) => {
                let v = match crate::results::shape::is_fraction(&t.metric) {
                    true => format!("{:.2}%", 100.0 * v),
                    false => format!("{}", (v * 1e6).round() / 1e6),
                };
                format!("best completed {} ({}) {v}, job {job}", t.metric, t.mode)
            }
            _ => format!("no completed member yet ({} {})", t.metric, t.mode),
        };
        return format!("{method}: a population of {}; {best}", t.trials);
    }
    if let (Some(front), Some(objectives)) = (t.front, &t.objectives) {
        let on: Vec<String> = objectives
            .iter()
            .map(|o| format!("{} ({})", o.metric, o.mode))
            .collect();
        return format!(
            "{method}: {} of {} trials drawn; front of {front} on {}",
            t.drawn,
            t.trials,
            on.join(", ")
        );
    }
    let value = |v: f64| match crate::results::shape::is_fraction(&t.metric) {
        true => format!("{:.2}%", 100.0 * v),
        false => format!("{}", (v * 1e6).round() / 1e6),
    };
    let best = match (t.best_value, t.best_job) {
        (Some(v), Some(job)) => format!("best {} ({}) {}, job {job}", t.metric, t.mode, value(v)),
        _ => format!("no completed trial yet ({} {})", t.metric, t.mode),
    };
    format!("{method}: {} of {} trials drawn; {best}", t.drawn, t.trials)
}

/// A program's output as a terminal may show it: control characters other than newline, tab and
/// a carriage return that ends a line (CR LF) are written visibly (`\x1b` as `^[`, DEL as `^?`, a
/// bare CR as `^M`, a C1 control such as U+009B as `<U+009B>`, a byte that is not UTF-8 as
/// `\xNN`), so a job's log cannot move the cursor, retitle the terminal, overwrite a line or
/// hide lines from whoever reads it (#24, #34).
pub fn visible(bytes: &[u8]) -> Vec<u8> {
    render(bytes, true).0
}

/// [`visible`] of as much of `bytes` as can be decided now, and how many bytes that took; with
/// `at_end` false, a character or CR LF that the end of `bytes` may cut is left for the next read.
fn render(bytes: &[u8], at_end: bool) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let len = utf8_len(b);
        if !at_end && (i + len.max(2) > bytes.len()) && (b == b'\r' || len > 1) {
            break; // cut: decide when the rest arrives
        }
        match b {
            b'\n' | b'\t' => out.push(b),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => out.push(b),
            b'\r' => out.extend_from_slice(b"^M"),
            0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
            0x7f => out.extend_from_slice(b"^?"),
            0x20..=0x7e => out.push(b),
            _ => match std::str::from_utf8(&bytes[i..(i + len).min(bytes.len())]) {
                Ok(c) if len > 1 => {
                    let ch = c.chars().next().unwrap_or_default();
                    match ('\u{80}'..='\u{9f}').contains(&ch) {
                        true => out.extend_from_slice(format!("<U+{:04X}>", ch as u32).as_bytes()),
                        false => out.extend_from_slice(c.as_bytes()),
                    }
                    i += len;
                    continue;
                }
                _ => out.extend_from_slice(format!("\\x{b:02X}").as_bytes()),
            },
        }
        i += 1;
    }
    (out, i)
}

/// How long the UTF-8 sequence a byte starts is (1 for ASCII and for a byte that starts none).
fn utf8_len(b: u8) -> usize {
    match b {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let log = b"ok\tline\n\x1b]0;owned\x07\x1b[2Jgone\x7f\r\n";
        assert_eq!(
            super::visible(log),
            b"ok\tline\n^[]0;owned^G^[[2Jgone^?\r\n".to_vec()
        );
    }

    /// C1 controls (U+009B is CSI to many terminals) and a bare CR (which overwrites the line
    /// shown) are written visibly; text in any script and CR LF pass.
    #[test]
    fn c1_controls_and_a_bare_cr_are_shown_not_obeyed() {
        let log = "épreuve ✓\r\nfake\rreal \u{9b}2J \u{85}end".as_bytes();
        assert_eq!(
            String::from_utf8(super::visible(log)).unwrap(),
            "épreuve ✓\r\nfake^Mreal <U+009B>2J <U+0085>end"
        );
        assert_eq!(super::visible(b"a\x9bb\xff"), b"a\\x9Bb\\xFF".to_vec());
    }

    /// A character or CR LF cut by the end of one read is shown whole once the rest arrives.
    #[test]
    fn a_character_cut_between_reads_is_kept_for_the_next() {
        let text = "x✓\r\n".as_bytes();
        for cut in 0..=text.len() {
            let (first, used) = super::render(&text[..cut], false);
            let mut all = first;
            all.extend(super::render(&text[used..], true).0);
            assert_eq!(all, text.to_vec(), "cut at {cut}");
        }
    }
}
