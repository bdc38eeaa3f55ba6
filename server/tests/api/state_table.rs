//! ARCHITECTURE.md's table of the job's life, checked against what the coordinator does: every row
//! (state, event, next state) has a scenario here that drives a fresh job into the state, makes the
//! event happen through the API or the clock, and reads the state back. A row without a scenario,
//! or a scenario without a row, fails the test: the table and the code cannot drift apart.
use crate::helpers::*;
use reqwest::StatusCode;

struct Row {
    state: String,
    event: String,
    next: String,
}

/// The rows of "The job's life" table.
fn table() -> Vec<Row> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("| state | event | next state |")
        .expect("the table");
    text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            assert_eq!(cells.len(), 3, "{l}");
            Row {
                state: cells[0].clone(),
                event: cells[1].clone(),
                next: cells[2].clone(),
            }
        })
        .collect()
}

/// A sweep of `jobs` one-epoch-at-a-time jobs with `attempts` attempts each, its first job claimed
/// (attempt 1); with `stop`, an ASHA rule under which the second job's report stops the first.
async fn running(app: &TestApp, attempts: i64, stop: bool) -> (i64, i64) {
    let rule = if stop {
        "[early_stop]\nmethod = \"asha\"\nmin_epochs = 1\nreduction_factor = 2\n"
    } else {
        ""
    };
    let created = app
        .submit(&format!(
            "name = \"life\"\n[train]\nepochs = 5\n[grid]\nseed = [0, 1]\n[run]\nmax_attempts = {attempts}\n{rule}"
        ))
        .await;
    let job = app.claim("w").await.expect("a claim").id;
    if stop {
        let other = app.claim("w").await.expect("a second claim").id;
        assert_eq!(
            app.metrics(other, 1, 1, Some(1.0), 0.9).await,
            StatusCode::OK
        );
        assert_eq!(app.metrics(job, 1, 1, Some(1.0), 0.1).await, StatusCode::OK);
    }
    (created.id, job)
}

async fn cancel(app: &TestApp, sweep: i64) {
    let (s, body) = app
        .post(
            &format!("/api/sweeps/{sweep}/cancel"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

async fn status(app: &TestApp, job: i64) -> JobStatus {
    app.job_detail(job).await.job.status
}

fn failed(attempt: i64) -> FinishRequest {
    FinishRequest {
        node_rank: None,
        attempt,
        status: Outcome::Failed,
        summary: None,
        error: Some("it broke".into()),
    }
}

/// Runs the row's scenario on a fresh coordinator; returns the status it ends in where the row's
/// next state names one status (None where the scenario checks several itself).
async fn scenario(row: &Row) -> Option<JobStatus> {
    if row.event == "anything" {
        return final_states_stay(&row.state).await; // a coordinator per final state
    }
    let app = spawn_app().await;
    match row.event.as_str() {
        "claim by a worker with room (not a cancelled job)" => {
            let (sweep, job) = running(&app, 3, false).await;
            assert_eq!(app.job_detail(job).await.job.attempt, 1, "attempt + 1");
            cancel(&app, sweep).await;
            assert!(
                app.claim("w").await.is_none(),
                "a cancelled job is not claimed"
            );
            Some(JobStatus::Running)
        }
        "sweep cancelled" if row.state == JobStatus::Pending.as_str() => {
            let (sweep, _) = running(&app, 3, false).await;
            let pending = app.sweep(sweep).await.jobs[1].id;
            cancel(&app, sweep).await;
            Some(status(&app, pending).await)
        }
        "sweep cancelled" => {
            let (sweep, job) = running(&app, 3, false).await;
            cancel(&app, sweep).await;
            assert!(app.heartbeat(job, 1).await.1.unwrap().cancel);
            Some(status(&app, job).await)
        }
        "early-stopping decision on a metrics report" => {
            let (_, job) = running(&app, 3, true).await;
            assert!(app.heartbeat(job, 1).await.1.unwrap().stop);
            Some(status(&app, job).await)
        }
        "finish `completed` / `diverged` / `cancelled` / `pruned`" => finish_as_told(&app).await,
        "finish `failed`, a cancel requested" => {
            let (sweep, job) = running(&app, 3, false).await;
            cancel(&app, sweep).await;
            app.send(&routes::finish(job), &failed(1)).await;
            Some(status(&app, job).await)
        }
        "finish `failed`, a stop requested" => {
            let (_, job) = running(&app, 3, true).await;
            app.send(&routes::finish(job), &failed(1)).await;
            Some(status(&app, job).await)
        }
        "finish `failed`, attempts left" => {
            let (_, job) = running(&app, 2, false).await;
            app.send(&routes::finish(job), &failed(1)).await;
            let j = app.job_detail(job).await.job;
            assert_eq!(j.error.as_deref(), Some("it broke"), "the error kept");
            Some(j.status)
        }
        "finish `failed`, no attempts left" => {
            let (_, job) = running(&app, 1, false).await;
            app.send(&routes::finish(job), &failed(1)).await;
            Some(status(&app, job).await)
        }
        "release (the worker gives it back)" => release(&app).await,
        "an exploit decided on its metrics report" => exploited(&app).await,
        "release with no epoch committed since its claim, past the free ones (`--free-idle-releases`, 3)" => {
            idle_releases(&app).await
        }
        "lease expires" => expire(&app).await,
        "a member's lease expires, or a member other than node 0 finishes `failed`" => {
            member_lost(&app).await
        }
        "not formed within `--gang-seconds`" => gang_not_formed().await,
        other => panic!(
            "the table's row ({}, {other}) has no scenario in this test",
            row.state
        ),
    }
}

/// The smallest exploit (`pbt::two_members_b_copies_a`): B copies A.
async fn exploited(app: &TestApp) -> Option<JobStatus> {
    let (sweep, a, b) = crate::pbt::two_members_b_copies_a(app).await;
    let detail = app.job_detail(b).await;
    assert_eq!(
        (detail.job.max_attempts, detail.job.epoch),
        (4, 2),
        "no attempt spent"
    );
    assert_eq!(detail.segments[0].donor, a);
    assert_eq!(app.sweep(sweep).await.jobs.len(), 2);
    Some(detail.job.status)
}

async fn finish_as_told(app: &TestApp) -> Option<JobStatus> {
    for outcome in [
        Outcome::Completed,
        Outcome::Diverged,
        Outcome::Cancelled,
        Outcome::Pruned,
    ] {
        let app = spawn_app().await;
        let (_, job) = running(&app, 3, false).await;
        assert_eq!(app.finish(job, 1, outcome).await.0, StatusCode::OK);
        assert_eq!(status(&app, job).await.as_str(), outcome.as_str());
    }
    let (_, job) = running(app, 3, true).await;
    app.finish(job, 1, Outcome::Completed).await;
    assert_eq!(
        status(app, job).await,
        JobStatus::Pruned,
        "a stop was requested"
    );
    None
}

/// Claim and give back with no progress, again and again: three releases are free, then each uses
/// its attempt up, and the last fails the job. A release after a committed epoch stays free.
async fn idle_releases(app: &TestApp) -> Option<JobStatus> {
    let (_, job) = running(app, 1, false).await;
    for attempt in 1..=3 {
        assert_eq!(app.release(job, attempt).await.0, StatusCode::OK);
        assert_eq!(
            app.job_detail(job).await.job.max_attempts,
            1 + attempt,
            "free"
        );
        assert_eq!(app.claim("w").await.unwrap().attempt, attempt + 1);
    }
    // A release that follows progress is free, whatever came before.
    assert_eq!(app.metrics(job, 4, 1, Some(1.0), 0.5).await, StatusCode::OK);
    app.release(job, 4).await;
    assert_eq!(app.job_detail(job).await.job.max_attempts, 5);
    assert_eq!(app.claim("w").await.unwrap().attempt, 5);
    app.release(job, 5).await;
    let j = app.job_detail(job).await.job;
    assert!(
        j.error.as_deref().unwrap().contains("no epoch committed"),
        "{j:?}"
    );
    Some(j.status)
}

async fn release(app: &TestApp) -> Option<JobStatus> {
    let (_, job) = running(app, 1, false).await;
    assert_eq!(app.release(job, 1).await.0, StatusCode::OK);
    let j = app.job_detail(job).await.job;
    assert_eq!(j.max_attempts, 2, "the attempt is not used up");
    for (requested, ended) in [(false, JobStatus::Cancelled), (true, JobStatus::Pruned)] {
        let app = spawn_app().await;
        let (sweep, job) = running(&app, 3, requested).await;
        if !requested {
            cancel(&app, sweep).await;
        }
        app.release(job, 1).await;
        assert_eq!(status(&app, job).await, ended);
    }
    Some(j.status)
}

/// A 2-node job's gang, formed from two claims: (job, node 0's claim, node 1's claim).
async fn gang(app: &TestApp, attempts: i64) -> (i64, protocol::Claim, protocol::Claim) {
    let sweep = app
        .submit(&format!(
            "name = \"gang\"\n[train]\nnnodes = 2\n[run]\nmax_attempts = {attempts}\n"
        ))
        .await
        .id;
    let a = app.claim_with(&crate::gangs::asks("a")).await.unwrap();
    let b = app.claim_with(&crate::gangs::asks("b")).await.unwrap();
    (sweep, a, b)
}

async fn member_lost(app: &TestApp) -> Option<JobStatus> {
    let (_, a, _) = gang(app, 3).await;
    app.clock.advance_ms(LEASE_MS / 2);
    assert_eq!(crate::gangs::beat(app, &a).await.0, StatusCode::OK);
    app.clock.advance_ms(LEASE_MS / 2 + 1);
    server::startup::reap_once(&app.state).await.unwrap();
    assert_eq!(
        status(app, a.id).await,
        JobStatus::Pending,
        "node 1 was lost"
    );
    let app = spawn_app().await;
    let (_, a, b) = gang(&app, 1).await;
    crate::gangs::finish_as(&app, &b, Outcome::Failed).await;
    assert_eq!(status(&app, a.id).await, JobStatus::Failed, "node 1 failed");
    assert_eq!(crate::gangs::beat(&app, &a).await.0, StatusCode::CONFLICT);
    None
}

async fn gang_not_formed() -> Option<JobStatus> {
    let mut ended = None;
    for cancelled in [false, true] {
        let app = spawn_with(|c| c.gang_ms = 1_000).await;
        let sweep = app
            .submit("name = \"gang\"\n[train]\nnnodes = 2\n[run]\nmax_attempts = 1\n")
            .await
            .id;
        let a = app.claim_with(&crate::gangs::asks("a")).await.unwrap();
        if cancelled {
            cancel(&app, sweep).await;
        }
        app.clock.advance_ms(1_001);
        server::startup::reap_once(&app.state).await.unwrap();
        let job = app.job_detail(a.id).await.job;
        if cancelled {
            assert_eq!(job.status, JobStatus::Cancelled);
        } else {
            assert_eq!(job.max_attempts, 2, "the attempt is not used up");
            ended = Some(job.status);
        }
    }
    ended
}

async fn expire(app: &TestApp) -> Option<JobStatus> {
    let (_, job) = running(app, 1, false).await;
    app.expire_leases().await;
    assert_eq!(
        status(app, job).await,
        JobStatus::Failed,
        "no attempts left"
    );
    for (requested, ended) in [(false, JobStatus::Cancelled), (true, JobStatus::Pruned)] {
        let app = spawn_app().await;
        let (sweep, job) = running(&app, 3, requested).await;
        if !requested {
            cancel(&app, sweep).await;
        }
        app.expire_leases().await;
        assert_eq!(status(&app, job).await, ended);
    }
    let app = spawn_app().await;
    let (_, job) = running(&app, 3, false).await;
    app.expire_leases().await;
    Some(status(&app, job).await)
}

/// Every final state, then every event: nothing changes it.
async fn final_states_stay(states: &str) -> Option<JobStatus> {
    for outcome in [
        Outcome::Completed,
        Outcome::Diverged,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::Pruned,
    ] {
        let app = spawn_app().await;
        let (sweep, job) = running(&app, 1, false).await;
        app.finish(job, 1, outcome).await;
        let ended = status(&app, job).await;
        assert!(states.contains(ended.as_str()), "{states}");
        assert_eq!(
            app.finish(job, 1, outcome).await.0,
            StatusCode::OK,
            "idempotent"
        );
        assert_eq!(app.heartbeat(job, 1).await.0, StatusCode::CONFLICT);
        assert_eq!(app.release(job, 1).await.0, StatusCode::CONFLICT);
        app.expire_leases().await;
        cancel(&app, sweep).await;
        assert_eq!(status(&app, job).await, ended, "{outcome:?}");
    }
    None
}

#[tokio::test]
async fn the_job_state_table_is_what_the_coordinator_does() {
    let rows = table();
    assert_eq!(
        rows.len(),
        16,
        "a row added or removed: give it a scenario here"
    );
    for row in &rows {
        let ended = scenario(row).await;
        // The next state's first word, where it is a status, is the one the scenario ended in.
        let first = row.next.split([',', ' ']).next().unwrap_or_default();
        if let (Some(ended), Some(named)) = (ended, JobStatus::parse(first)) {
            assert_eq!(ended, named, "{} | {} | {}", row.state, row.event, row.next);
        }
    }
}
