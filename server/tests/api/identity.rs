//! Who a worker is and what it may do, tried as an attacker holding a worker token would: per-worker
//! credentials (names bound to them, revoked at once, capped, minted by enrollment), gangs that meet
//! only where their members are, reads that cannot hold the database, and writes that are atomic
//! (a claim whose reply cannot be made, or whose second statement fails, leaves nothing).
use crate::gangs::{asks, beat, rank};
use crate::helpers::*;
use protocol::credentials::{CredentialRow, IssuedCredential};
use protocol::{Claim, Rendezvous};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TWO_NODES: &str = r#"
name = "gang"
[train]
dataset = "synthetic"
epochs = 2
nnodes = 2
nproc_per_node = 2
[run]
max_attempts = 1
[grid]
seed = [1]
"#;

/// A claim of a 2-node job offering `addr` as its rendezvous: the status.
async fn claim_offering(app: &TestApp, worker: &str, addr: &str) -> (StatusCode, Value) {
    let mut req = asks(worker);
    req.rendezvous = Some(Rendezvous {
        addr: addr.into(),
        port: 29500,
    });
    app.send(routes::CLAIM, &req).await
}

#[tokio::test]
async fn a_rendezvous_outside_the_claims_address_and_the_operators_networks_is_refused() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_NODES).await.id;
    for far in ["203.0.113.66", "169.254.169.254", "10.0.0.1"] {
        let (s, body) = claim_offering(&app, "attacker", far).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{far}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("rendezvous:"),
            "{body}"
        );
    }
    assert_eq!(app.sweep(sweep).await.jobs[0].attempt, 0, "nothing taken");
    // Its own address (loopback here, by literal or by name) is where a node 0 may meet.
    let (s, body) = claim_offering(&app, "honest", "localhost").await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // The operator's declared gang network admits addresses inside it, only those.
    let app = spawn_with(|c| c.rendezvous_networks = vec!["203.0.113.0/24".parse().unwrap()]).await;
    app.submit(TWO_NODES).await;
    assert_eq!(
        claim_offering(&app, "x", "203.0.114.1").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        claim_offering(&app, "n0", "203.0.113.66").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_member_that_released_cannot_come_back_as_node_0_within_the_gang_window() {
    let app = spawn_with(|c| c.gang_ms = 60_000).await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("honest")).await.unwrap();
    let b = app.claim_with(&asks("mallory")).await.unwrap();
    assert_eq!((rank(&a), rank(&b)), (0, 1));
    // Mallory gives the gang's attempt back, free of charge, and asks again at once.
    let body = json!({"attempt": b.attempt, "node_rank": 1, "reason": "preempted"});
    let (s, v) = crate::gangs::write_as(&app, &b, &routes::release(b.id), body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        app.claim_with(&asks("mallory")).await.is_none(),
        "the member that released is not node 0 of the same job within the gang window"
    );
    let a2 = app.claim_with(&asks("honest")).await.unwrap();
    assert_eq!(rank(&a2), 0);
    let b2 = app.claim_with(&asks("mallory")).await.unwrap();
    assert_eq!(
        (b2.id, rank(&b2)),
        (a.id, 1),
        "it may still join as a member"
    );
    assert_eq!(b2.gang.unwrap().master, a2.gang.unwrap().master);
}

#[tokio::test]
async fn a_member_that_lapses_is_blamed_never_the_node_that_kept_heartbeating() {
    let app = spawn_app().await;
    app.submit(TWO_NODES).await;
    let a = app.claim_with(&asks("honest-n0")).await.unwrap();
    let b = app.claim_with(&asks("lapser")).await.unwrap();
    app.clock.advance_ms(LEASE_MS / 2);
    assert_eq!(beat(&app, &a).await.0, StatusCode::OK);
    app.clock.advance_ms(LEASE_MS / 2 + 1);
    assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 1);
    let job = app.job_detail(a.id).await;
    assert_eq!(job.job.status, JobStatus::Failed, "its one attempt spent");
    let error = job.job.error.clone().unwrap();
    assert!(
        error.contains("lapser") && !error.contains("honest"),
        "{error}"
    );
    let attempt_error = job.attempts[0].error.clone().unwrap();
    assert_eq!(
        attempt_error,
        "node 1 of the gang (worker lapser) stopped heartbeating"
    );
    let _ = b;
}

#[tokio::test]
async fn a_job_search_is_a_literal_of_at_most_200_bytes() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    let page = |q: String| {
        let app = &app;
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/api/sweeps/{sweep}/jobs", app.base),
                &[("q", q)],
            )
            .unwrap();
            let r = app.http.get(url).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = page("%".repeat(201)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("q:"), "{v}");
    // `%` and `_` are characters, not wildcards: nothing here contains them.
    for literal in ["%", "_", "%%", "\\"] {
        let (s, v) = page(literal.into()).await;
        assert_eq!(
            (s, v["total"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{literal}"
        );
    }
    let (_, v) = page("0.0001".into()).await;
    assert_eq!(v["total"], 1);
    let (_, v) = page("LR".into()).await;
    assert_eq!(v["total"], 2, "ASCII case ignored");
}

/// Opens the coordinator's SQLite file beside it (as an operator's shell would).
async fn db(app: &TestApp) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claim_whose_reply_cannot_be_made_leaves_nothing_behind() {
    let app = spawn_app().await;
    let sweep = app
        .submit("name = \"c\"\n[command]\nargv = [\"true\", \"{lr}\"]\n[grid]\nlr = [0.1]\n")
        .await
        .id;
    sqlx::query("UPDATE sweeps SET command = '{\"argv\": 5}'")
        .execute(&mut db(&app).await)
        .await
        .unwrap();
    let (s, _) = app
        .post(
            routes::CLAIM,
            json!({"worker": "w", "accepts_commands": true}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let job = &app.sweep(sweep).await.jobs[0];
    assert_eq!(
        (job.status, job.attempt, job.worker.as_deref()),
        (JobStatus::Pending, 0, None),
        "no attempt handed out that no worker learned of"
    );
}

/// Fault injection: the multi-node claim's second statement (the gang member's row) made to fail
/// by a trigger; nothing of its first (the job taken, its attempt counted) may be committed.
#[tokio::test]
async fn a_write_whose_second_statement_fails_commits_nothing_of_its_first() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_NODES).await.id;
    let mut c = db(&app).await;
    sqlx::query(
        "CREATE TRIGGER injected_fault BEFORE INSERT ON gang_members
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let (s, _) = app.send(routes::CLAIM, &asks("n0")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let job = &app.sweep(sweep).await.jobs[0];
    assert_eq!((job.status, job.attempt), (JobStatus::Pending, 0));
    // The same write goes through once the fault is gone: nothing was left half-done.
    sqlx::query("DROP TRIGGER injected_fault")
        .execute(&mut c)
        .await
        .unwrap();
    let a = app.claim_with(&asks("n0")).await.unwrap();
    assert_eq!((a.attempt, rank(&a)), (1, 0));
}

/// `POST /api/workers` as the admin: the issued credential.
async fn add(app: &TestApp, body: Value) -> IssuedCredential {
    let (s, v) = app.post(routes::WORKERS, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

/// A claim with `token` under `worker`'s name: the status and body.
async fn claim_as(app: &TestApp, token: &str, worker: &str) -> (StatusCode, Value) {
    app.send_as(
        Method::POST,
        routes::CLAIM,
        Some(token),
        Some(json!({"worker": worker})),
    )
    .await
}

#[tokio::test]
async fn a_worker_credential_claims_under_its_own_name_and_revoking_it_ends_its_leases() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    let node7 = add(&app, json!({"name": "node7"})).await;
    assert!(node7.token.starts_with("swk_"));
    // Its name, or its name and a suffix; never another's.
    for other in ["node70", "node", "other", "xnode7"] {
        let (s, v) = claim_as(&app, &node7.token, other).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{other}: {v}");
    }
    // Nor may a shared token pass for it (its name would block node7's gangs, or hide behind it).
    let (s, v) = claim_as(&app, WORKER_TOKEN, "node7-1").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        claim_as(&app, WORKER_TOKEN, "node70").await.0,
        StatusCode::OK
    );
    let (s, held) = claim_as(&app, &node7.token, "node7-slurm-12_3").await;
    assert_eq!(s, StatusCode::OK, "{held}");
    let held: Claim = serde_json::from_value(held).unwrap();
    // A second add of the same name is refused; only admins list or add.
    let (s, _) = app.post(routes::WORKERS, json!({"name": "node7"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = app
        .send_as(Method::GET, routes::WORKERS, Some(&node7.token), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.get(routes::WORKERS).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "anonymous reads do not list credentials"
    );
    let before = app.job_detail(held.id).await.job.max_attempts;
    let (s, v) = app.get(routes::WORKERS).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (_, v) = app
        .send_as(Method::GET, routes::WORKERS, Some(TOKEN), None)
        .await;
    let rows: Vec<CredentialRow> = serde_json::from_value(v).unwrap();
    assert_eq!((rows[0].name.as_str(), rows[0].running), ("node7", 1));
    let (s, v) = app.post(&routes::revoke_worker("node7"), json!({})).await;
    assert_eq!(
        (s, v["released"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{v}"
    );
    let job = app.job_detail(held.id).await;
    assert_eq!(job.job.status, JobStatus::Pending, "given back at once");
    assert_eq!(job.job.max_attempts, before + 1, "no attempt charged");
    // From then on its token opens nothing: not the lease it held, not a claim.
    let body = json!({"attempt": held.attempt});
    let r = app
        .http
        .post(format!("{}{}", app.base, routes::heartbeat(held.id)))
        .bearer_auth(&node7.token)
        .header(protocol::LEASE_SECRET_HEADER, &held.lease_secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        claim_as(&app, &node7.token, "node7").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, v) = app
        .send_as(Method::GET, routes::WORKERS, Some(TOKEN), None)
        .await;
    let rows: Vec<CredentialRow> = serde_json::from_value(v).unwrap();
    assert!(
        rows[0].revoked_at.is_some() && rows[0].running == 0,
        "{rows:?}"
    );
    let _ = sweep;
}

#[tokio::test]
async fn a_credential_holds_at_most_its_cap_of_jobs_at_once() {
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let capped = add(&app, json!({"name": "capped", "max_in_flight": 1})).await;
    let (s, first) = claim_as(&app, &capped.token, "capped").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        claim_as(&app, &capped.token, "capped-2").await.0,
        StatusCode::NO_CONTENT,
        "a second job while one is held: none, though one is pending"
    );
    let first: Claim = serde_json::from_value(first).unwrap();
    let (s, _) = app
        .send_as(
            Method::POST,
            &routes::finish(first.id),
            Some(&capped.token),
            Some(json!({"attempt": first.attempt, "status": Outcome::Completed})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        claim_as(&app, &capped.token, "capped").await.0,
        StatusCode::OK
    );
    for bad in [
        json!({"name": "c", "max_in_flight": 0}),
        json!({"name": "has space"}),
    ] {
        let (s, v) = app.post(routes::WORKERS, bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    }
}

#[tokio::test]
async fn an_enrollment_credential_mints_named_credentials_a_limited_number_of_times() {
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let e = add(
        &app,
        json!({"name": "array", "enrollment": {"uses": 1, "expires_in_seconds": 600}}),
    )
    .await;
    assert!(e.token.starts_with("swe_"));
    assert_eq!(
        claim_as(&app, &e.token, "array-1").await.0,
        StatusCode::FORBIDDEN,
        "an enrollment credential runs no job"
    );
    let enroll = |suffix: &str| {
        app.send_as(
            Method::POST,
            routes::ENROLL,
            Some(&e.token),
            Some(json!({"suffix": suffix})),
        )
    };
    let (s, v) = enroll("node3-slurm-812_4-0").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let minted: IssuedCredential = serde_json::from_value(v).unwrap();
    assert_eq!(minted.name, "array-node3-slurm-812_4-0");
    assert_eq!(
        claim_as(&app, &minted.token, &minted.name).await.0,
        StatusCode::OK
    );
    let (s, v) = enroll("another").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "used up: {v}");
    // Expired: a fresh one, its clock moved past its end.
    let e2 = add(
        &app,
        json!({"name": "late", "enrollment": {"uses": 5, "expires_in_seconds": 60}}),
    )
    .await;
    app.clock.advance_ms(61_000);
    let (s, _) = app
        .send_as(
            Method::POST,
            routes::ENROLL,
            Some(&e2.token),
            Some(json!({"suffix": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Only a worker token's holder cannot enroll at all.
    let (s, _) = app
        .send_as(
            Method::POST,
            routes::ENROLL,
            Some(WORKER_TOKEN),
            Some(json!({"suffix": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_shared_worker_token_can_be_refused() {
    let app = spawn_with(|c| c.shared_worker_token = false).await;
    app.submit(TWO_JOBS).await;
    let (s, v) = claim_as(&app, WORKER_TOKEN, "w").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--no-shared-worker-token"),
        "{v}"
    );
    let own = add(&app, json!({"name": "w"})).await;
    assert_eq!(claim_as(&app, &own.token, "w").await.0, StatusCode::OK);
}

/// Credentials live in the database: a restarted coordinator knows the live ones and still
/// refuses the revoked.
#[tokio::test]
async fn credentials_survive_a_restart() {
    let mut app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let kept = add(&app, json!({"name": "kept"})).await;
    let gone = add(&app, json!({"name": "gone"})).await;
    let (s, _) = app.post(&routes::revoke_worker("gone"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    app.restart().await;
    assert_eq!(claim_as(&app, &kept.token, "kept").await.0, StatusCode::OK);
    assert_eq!(
        claim_as(&app, &gone.token, "gone").await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// The database, its WAL and the checkpoints are the owner's alone: they hold every sweep and the
/// lease hashes.
#[tokio::test]
async fn the_database_and_checkpoints_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    app.claim("w").await.unwrap();
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(app.db.clone()), 0o600);
    assert_eq!(mode(app.db.with_extension("db-wal")), 0o600);
    assert_eq!(mode(app.db.with_extension("artifacts")), 0o700);
}

/// Behind a TLS proxy the session cookie is marked Secure (`serve --secure-cookie`); by default
/// not, as the coordinator itself speaks plain HTTP.
#[tokio::test]
async fn the_session_cookie_is_secure_when_asked() {
    for (secure, wanted) in [(false, false), (true, true)] {
        let app = spawn_with(|c| c.secure_cookie = secure).await;
        let cookie = crate::hardening::sign_in(&app).await;
        assert_eq!(cookie.contains("; Secure"), wanted, "{cookie}");
    }
}

/// A checkpoint is read only by the attempt that holds the job now (or the admin): a released
/// attempt's old secret reads nothing, so claiming a job just to read its checkpoint and giving
/// it back leaves no way in.
#[tokio::test]
async fn a_checkpoint_is_read_only_by_the_attempt_that_holds_the_job() {
    let app = spawn_app().await;
    app.submit_toml("name = \"c\"\n[train]\nepochs = 2\n").await;
    let c = app.claim("w").await.unwrap();
    let r = app
        .http
        .put(format!(
            "{}{}?attempt=1",
            app.base,
            routes::checkpoint(c.id)
        ))
        .header(protocol::LEASE_SECRET_HEADER, &c.lease_secret)
        .bearer_auth(WORKER_TOKEN)
        .body(vec![7u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let read = |secret: String, token: &'static str| {
        let app = &app;
        async move {
            app.http
                .get(format!("{}{}", app.base, routes::checkpoint(c.id)))
                .header(protocol::LEASE_SECRET_HEADER, secret)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        read(c.lease_secret.clone(), WORKER_TOKEN).await,
        StatusCode::OK
    );
    assert_eq!(app.release(c.id, c.attempt).await.0, StatusCode::OK);
    assert_eq!(
        read(c.lease_secret.clone(), WORKER_TOKEN).await,
        StatusCode::FORBIDDEN,
        "a released attempt's secret"
    );
    assert_eq!(
        read(String::new(), TOKEN).await,
        StatusCode::OK,
        "the admin"
    );
    let again = app.claim("w2").await.unwrap();
    assert_eq!(read(again.lease_secret, WORKER_TOKEN).await, StatusCode::OK);
}

/// A TPE draw has a cost budget (history x candidates) checked at submit, where the number is
/// known, never at a claim; a warm-start sweep named twice counts once.
#[tokio::test]
async fn a_tpe_draw_that_would_cost_too_much_is_refused_at_submit() {
    let app = spawn_app().await;
    let first = app.submit(crate::tpe::TPE).await.id;
    let big = crate::tpe::TPE.replace("trials = 14", "trials = 100000\nei_candidates = 10000");
    let (s, v) = app.submit_toml(&big).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.starts_with("search.ei_candidates:") && e.contains("1000000000"),
        "{e}"
    );
    let repeated = format!("{first}, ").repeat(16);
    let warm = crate::tpe::TPE.replace(
        "seed = 3",
        &format!(
            "seed = 3\nwarm_start = [{}]",
            repeated.trim_end_matches(", ")
        ),
    );
    let id = app.submit(&warm).await.id;
    let (_, spec) = app.get(&format!("/api/sweeps/{id}")).await;
    assert_eq!(
        spec["spec"]["search"]["warm_start"],
        json!([first]),
        "{spec}"
    );
}

/// A checkpoint upload of `bytes` for claim `c`: the status.
async fn upload(app: &TestApp, c: &Claim, bytes: usize) -> StatusCode {
    app.http
        .put(format!(
            "{}{}?attempt={}",
            app.base,
            routes::checkpoint(c.id),
            c.attempt
        ))
        .header(protocol::LEASE_SECRET_HEADER, &c.lease_secret)
        .bearer_auth(WORKER_TOKEN)
        .body(vec![1u8; bytes])
        .send()
        .await
        .unwrap()
        .status()
}

/// The value of a Prometheus gauge.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.get_text("/metrics").await;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"));
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The global checkpoint and log quotas: past them an upload or append is refused (413, which a
/// worker drops and goes on from), the space comes back when a job ends, and Prometheus shows
/// the use.
#[tokio::test]
async fn global_checkpoint_and_log_quotas_hold() {
    let app = spawn_with(|c| {
        c.max_checkpoints_total = Some(1500);
        c.max_logs_total = Some(100);
    })
    .await;
    app.submit(TWO_JOBS).await;
    let a = app.claim("a").await.unwrap();
    let b = app.claim("b").await.unwrap();
    assert_eq!(upload(&app, &a, 1024).await, StatusCode::OK);
    assert_eq!(
        upload(&app, &a, 1200).await,
        StatusCode::OK,
        "a replacement counts once"
    );
    assert_eq!(upload(&app, &b, 1024).await, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gauge(&app, "sweep_checkpoint_bytes").await, 1200);
    app.finish(a.id, a.attempt, Outcome::Completed).await;
    assert_eq!(
        gauge(&app, "sweep_checkpoint_bytes").await,
        0,
        "freed with its job"
    );
    assert_eq!(upload(&app, &b, 1024).await, StatusCode::OK);

    let append = |offset: usize, n: usize| {
        let app = &app;
        let b = &b;
        async move {
            app.http
                .post(format!(
                    "{}{}?attempt={}&offset={offset}",
                    app.base,
                    routes::log(b.id),
                    b.attempt
                ))
                .header(protocol::LEASE_SECRET_HEADER, &b.lease_secret)
                .bearer_auth(WORKER_TOKEN)
                .body(vec![b'x'; n])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(append(0, 100).await, StatusCode::NO_CONTENT);
    assert_eq!(gauge(&app, "sweep_log_bytes").await, 100);
    assert_eq!(append(100, 10).await, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A job given back many times answers with a page of its attempts, and the total.
#[tokio::test]
async fn a_jobs_attempts_are_paged() {
    let app = spawn_with(|c| c.free_idle_releases = 1_000).await;
    app.submit("name = \"c\"\n[train]\nepochs = 2\n").await;
    let mut c = app.claim("w").await.unwrap();
    for _ in 0..120 {
        assert_eq!(app.release(c.id, c.attempt).await.0, StatusCode::OK);
        c = app.claim("w").await.unwrap();
    }
    let job = app.job_detail(c.id).await;
    assert_eq!((job.attempts.len(), job.attempts_total), (100, 121));
    assert_eq!(job.attempts[0].attempt, 1);
    let (_, v) = app
        .get(&format!(
            "{}?attempts_offset=100&attempts_limit=50",
            routes::job(c.id)
        ))
        .await;
    let page: JobDetail = serde_json::from_value(v).unwrap();
    let numbers: Vec<i64> = page.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(
        numbers,
        (101..=121).collect::<Vec<_>>(),
        "the running one last"
    );
}

/// `server worker add | list | revoke`: the admin's daily commands, each a client of the API. (A
/// runtime of several threads: the command blocks one while the coordinator answers on another.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_commands_add_list_and_revoke() {
    let app = spawn_app().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .arg("worker")
            .args(args)
            .args(["--server", &app.base])
            .env("SWEEP_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let token = cli(&["add", "node9", "--max-in-flight", "2"]);
    assert!(token.trim().starts_with("swk_"), "{token}");
    let enroll = cli(&[
        "add",
        "arr",
        "--enrollment",
        "--uses",
        "3",
        "--expires-hours",
        "1",
    ]);
    assert!(enroll.trim().starts_with("swe_"), "{enroll}");
    app.submit(TWO_JOBS).await;
    assert_eq!(
        claim_as(&app, token.trim(), "node9").await.0,
        StatusCode::OK
    );
    let list = cli(&["list"]);
    let row = list.lines().find(|l| l.starts_with("node9")).unwrap();
    assert!(
        row.contains(" 1 ") && row.contains(" 2 ") && row.contains("live"),
        "{list}"
    );
    assert!(list.contains("3 uses left"), "{list}");
    let revoked = cli(&["revoke", "node9"]);
    assert!(revoked.contains("1 job(s)"), "{revoked}");
    assert!(cli(&["list"])
        .lines()
        .any(|l| l.starts_with("node9") && l.ends_with("revoked")));
}
