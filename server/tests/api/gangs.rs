//! Jobs that span nodes, through the worker protocol as workers would speak it: a gang forms from
//! claims, holds one attempt, ends for every member when one is lost, and dissolves when it does
//! not form in time. Each member here holds its own lease secret, as a real worker does.
use crate::helpers::*;
use protocol::{Capacity, Claim, ClaimRequest, GangState, Rendezvous};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TWO_NODES: &str = r#"
name = "gang"
[train]
dataset = "synthetic"
epochs = 2
nnodes = 2
nproc_per_node = 2
[grid]
seed = [1, 2]
"#;

/// A worker with 2 free ranks that offers a rendezvous: its own address, as a worker's default
/// (every test worker here is on loopback; a rendezvous elsewhere is refused, see `identity`).
pub(crate) fn asks(worker: &str) -> ClaimRequest {
    ClaimRequest {
        deadline: None,
        worker: worker.into(),
        capacity: Some(Capacity {
            ranks: 2,
            max_batch_size: None,
        }),
        accepts_commands: false,
        rendezvous: Some(Rendezvous {
            addr: "127.0.0.1".into(),
            port: 29500,
        }),
    }
}

/// A member's write to `path` with its own secret.
pub(crate) async fn write_as(
    app: &TestApp,
    c: &Claim,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(TOKEN)
        .header(protocol::LEASE_SECRET_HEADER, &c.lease_secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) fn rank(c: &Claim) -> i64 {
    c.gang.as_ref().expect("a gang's part").node_rank
}

/// A member's heartbeat: the status, and how far its gang has formed.
pub(crate) async fn beat(app: &TestApp, c: &Claim) -> (StatusCode, Option<GangState>) {
    let body = json!({"attempt": c.attempt, "node_rank": rank(c)});
    let (s, v) = write_as(app, c, &routes::heartbeat(c.id), body).await;
    (
        s,
        serde_json::from_value::<HeartbeatReply>(v)
            .ok()
            .and_then(|r| r.gang),
    )
}

pub(crate) async fn finish_as(app: &TestApp, c: &Claim, status: Outcome) -> StatusCode {
    let body = json!({"attempt": c.attempt, "status": status, "node_rank": rank(c),
                      "summary": {"world_size": 4}, "error": "boom"});
    write_as(app, c, &routes::finish(c.id), body).await.0
}

#[tokio::test]
async fn a_two_node_job_is_one_attempt_of_two_workers_formed_from_claims() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_NODES).await.id;
    // A worker without a rendezvous never gets a multi-node job.
    let mut plain = asks("plain");
    plain.rendezvous = None;
    assert!(app.claim_with(&plain).await.is_none());

    let a = app.claim_with(&asks("a")).await.expect("node 0");
    let g = a.gang.clone().unwrap();
    assert_eq!((g.nnodes, g.node_rank), (2, 0));
    assert_eq!(g.master.addr, "127.0.0.1");
    let (s, gang) = beat(&app, &a).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        gang,
        Some(GangState {
            joined: 1,
            nnodes: 2
        })
    );
    let detail = app.job_detail(a.id).await;
    assert_eq!(
        detail.waiting.as_deref(),
        Some("waiting for 1 more worker with 2 free ranks (1 of 2 joined)")
    );
    // The same worker asking again does not join its own gang, nor wait in a second one.
    assert!(app.claim_with(&asks("a")).await.is_none());

    let b = app.claim_with(&asks("b")).await.expect("node 1");
    assert_eq!(
        b.id, a.id,
        "a claim joins the forming gang before it starts another"
    );
    assert_eq!(b.attempt, a.attempt, "one attempt for the whole gang");
    assert_eq!(rank(&b), 1);
    assert_eq!(
        b.gang.as_ref().unwrap().master,
        g.master,
        "node 0's rendezvous"
    );
    assert_ne!(
        b.lease_secret, a.lease_secret,
        "each member has a secret of its own"
    );
    assert!(beat(&app, &a).await.1.unwrap().formed());
    assert!(beat(&app, &b).await.1.unwrap().formed());
    let detail = app.job_detail(a.id).await;
    assert_eq!(detail.waiting, None);
    let members: Vec<(i64, String)> = detail.attempts[0]
        .members
        .iter()
        .map(|m| (m.node_rank, m.worker.clone()))
        .collect();
    assert_eq!(members, vec![(0, "a".into()), (1, "b".into())]);

    // Node 0 alone reports: a member's secret writes no metrics, and cannot pass for node 0.
    let m = serde_json::to_value(TestApp::report(a.attempt, 1, Some(1.0), 0.5)).unwrap();
    assert_eq!(
        write_as(&app, &b, &routes::metrics(a.id), m.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let as_node_1 = json!({"attempt": a.attempt, "node_rank": 1});
    assert_eq!(
        write_as(&app, &a, &routes::heartbeat(a.id), as_node_1)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        write_as(&app, &a, &routes::metrics(a.id), m).await.0,
        StatusCode::OK
    );

    // Node 1's part ends first: the job runs on until node 0 finishes it.
    assert_eq!(
        finish_as(&app, &b, Outcome::Completed).await,
        StatusCode::OK
    );
    assert_eq!(app.job_detail(a.id).await.job.status, JobStatus::Running);
    assert_eq!(
        finish_as(&app, &a, Outcome::Completed).await,
        StatusCode::OK
    );
    let done = app.job_detail(a.id).await;
    assert_eq!(done.job.status, JobStatus::Completed);
    assert_eq!(
        done.job.summary,
        Some(json!({"world_size": 4})),
        "node 0's summary"
    );
    assert!(done.attempts[0].members.iter().all(|m| m.done));
    let _ = sweep;
}

/// Three workers, two 2-node jobs: the third worker starts the second gang and waits; it is joined
/// once the first job ends. Neither job waits on the other.
#[tokio::test]
async fn two_gangs_competing_for_three_workers_both_complete() {
    let app = spawn_app().await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("a")).await.unwrap();
    let b = app.claim_with(&asks("b")).await.unwrap();
    let c = app.claim_with(&asks("c")).await.unwrap();
    assert_eq!(a.id, b.id);
    assert_ne!(c.id, a.id);
    assert_eq!(rank(&c), 0);
    // c waits in its gang: it takes no other multi-node job meanwhile.
    assert!(app.claim_with(&asks("c")).await.is_none());
    for m in [&b, &a] {
        assert_eq!(finish_as(&app, m, Outcome::Completed).await, StatusCode::OK);
    }
    let d = app.claim_with(&asks("a")).await.unwrap();
    assert_eq!((d.id, rank(&d)), (c.id, 1));
    for m in [&d, &c] {
        assert_eq!(finish_as(&app, m, Outcome::Completed).await, StatusCode::OK);
    }
    for id in [a.id, c.id] {
        assert_eq!(app.job_detail(id).await.job.status, JobStatus::Completed);
    }
}

/// A member lost (no heartbeat) or failed ends the attempt for the whole gang; node 0 learns it
/// on its next write (409).
#[tokio::test]
async fn a_lost_or_failed_member_ends_the_attempt_for_every_member() {
    let app = spawn_app().await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("a")).await.unwrap();
    let b = app.claim_with(&asks("b")).await.unwrap();
    // Node 0 heartbeats through the lease, node 1 does not.
    app.clock.advance_ms(LEASE_MS / 2);
    assert_eq!(beat(&app, &a).await.0, StatusCode::OK);
    app.clock.advance_ms(LEASE_MS / 2 + 1);
    assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 1);
    let job = app.job_detail(a.id).await;
    assert_eq!(job.job.status, JobStatus::Pending);
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("lease expired"));
    assert_eq!(beat(&app, &a).await.0, StatusCode::CONFLICT);

    // The retry forms anew; node 1 fails: the attempt ends failed for both, node 1's error kept.
    let a2 = app.claim_with(&asks("a")).await.unwrap();
    let b2 = app.claim_with(&asks("b")).await.unwrap();
    assert_eq!((a2.id, a2.attempt, b2.attempt), (a.id, 2, 2));
    assert_eq!(finish_as(&app, &b2, Outcome::Failed).await, StatusCode::OK);
    let job = app.job_detail(a.id).await;
    assert_eq!(job.job.status, JobStatus::Pending);
    assert_eq!(
        job.attempts[1].outcome.as_deref(),
        Some(Outcome::Failed.as_str())
    );
    assert!(
        job.attempts[1]
            .error
            .as_deref()
            .unwrap()
            .starts_with("node 1 of the gang: boom"),
        "{:?}",
        job.attempts[1]
    );
    assert_eq!(beat(&app, &a2).await.0, StatusCode::CONFLICT);
    let _ = b;
}

/// A gang that does not form within `--gang-seconds` is dissolved: the job pending again with no
/// attempt counted, its member told on its next heartbeat.
#[tokio::test]
async fn a_gang_that_does_not_form_in_time_is_dissolved_without_counting_an_attempt() {
    let app = spawn_with(|c| c.gang_ms = 5_000).await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("a")).await.unwrap();
    let before = app.job_detail(a.id).await.job.max_attempts;
    app.clock.advance_ms(4_000);
    assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 0);
    app.clock.advance_ms(1_001);
    assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 1);
    let job = app.job_detail(a.id).await;
    assert_eq!(job.job.status, JobStatus::Pending);
    assert_eq!(
        job.job.max_attempts,
        before + 1,
        "the attempt is given back"
    );
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("released"));
    assert_eq!(
        job.attempts[0].error.as_deref(),
        Some("its gang did not form in time: 1 of 2 workers joined")
    );
    assert_eq!(beat(&app, &a).await.0, StatusCode::CONFLICT);
    let prom = app.get_text("/metrics").await;
    assert!(prom.contains("sweep_gangs_dissolved_total 1"), "{prom}");
    // The job forms again from new claims.
    let again = app.claim_with(&asks("b")).await.unwrap();
    assert_eq!((again.id, rank(&again)), (a.id, 0));
}

/// A member lost before its gang formed (no heartbeat through a lease, shorter than the gang's
/// deadline): the job never started, so no attempt is used.
#[tokio::test]
async fn a_member_lost_while_its_gang_forms_costs_no_attempt() {
    let app = spawn_app().await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("a")).await.unwrap();
    let before = app.job_detail(a.id).await.job.max_attempts;
    app.clock.advance_ms(LEASE_MS + 1);
    assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 1);
    let job = app.job_detail(a.id).await;
    assert_eq!(job.job.status, JobStatus::Pending);
    assert_eq!(
        job.job.max_attempts,
        before + 1,
        "the attempt is given back"
    );
    assert_eq!(
        job.attempts[0].error.as_deref(),
        Some("node 0 of the gang (worker a) stopped heartbeating while it formed")
    );
}

/// A single-node job's heartbeat that names a node is a mistake said as one (422), not a lost lease.
#[tokio::test]
async fn a_node_rank_on_a_single_node_job_is_refused_as_such() {
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let c = app.claim_with(&asks("a")).await.unwrap();
    assert!(c.gang.is_none(), "a single-node job has no gang");
    let body = json!({"attempt": c.attempt, "node_rank": 0});
    let (s, v) = write_as(&app, &c, &routes::heartbeat(c.id), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("node_rank"), "{v}");
}

/// `nnodes` is bounded where it is set, and the 422 names the field.
#[tokio::test]
async fn nnodes_out_of_bounds_is_refused_naming_the_field() {
    let app = spawn_app().await;
    for (toml, field) in [
        ("name = \"x\"\n[train]\nnnodes = 0\n", "train.nnodes"),
        ("name = \"x\"\n[train]\nnnodes = 1025\n", "train.nnodes"),
        ("name = \"x\"\n[grid]\nnnodes = [1, 2000]\n", "grid.nnodes"),
        (
            "name = \"x\"\n[command]\nargv = [\"x\"]\nnnodes = 0\n",
            "command.nnodes",
        ),
    ] {
        let (s, body) = app.submit_toml(toml).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{toml}: {body}");
        assert!(body.to_string().contains(field), "{toml}: {body}");
    }
    let ok = "name = \"x\"\n[command]\nargv = [\"x\"]\nranks = 2\nnnodes = 3\n";
    assert_eq!(app.submit_toml(ok).await.0, StatusCode::CREATED);
}
