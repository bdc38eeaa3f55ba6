use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn a_sweep_lives_from_submit_to_finished() {
    let app = spawn_app().await;
    let created = app.submit(TWO_JOBS).await;
    assert_eq!(created.jobs, 2);
    let sweep = created.id;

    let c = app.claim("w1").await.expect("a job");
    assert_eq!((c.sweep_id, c.attempt), (sweep, 1));
    assert_eq!(c.params["lr"], 0.01, "oldest first");
    assert_eq!(c.params["epochs"], 2);
    let job = c.id;
    let (s, hb) = app.heartbeat(job, 1).await;
    assert_eq!(s, StatusCode::OK);
    let hb = hb.expect("a heartbeat reply");
    assert!(!hb.cancel);
    assert!(hb.lease_expires_at > c.lease_expires_at - 1);
    assert_eq!(app.metrics(job, 1, 1, Some(1.5), 0.4).await, StatusCode::OK);
    assert_eq!(app.metrics(job, 1, 2, Some(1.2), 0.5).await, StatusCode::OK);
    let sw = app.sweep(sweep).await;
    assert_eq!(sw.sweep.status, SweepStatus::Running);
    let first = &sw.jobs[0];
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(first.worker.as_deref(), Some("w1"));
    assert_eq!(first.epoch, 2);
    assert_eq!(first.latest.as_ref().and_then(|m| m.accuracy), Some(0.5));
    assert_eq!(
        app.finish(job, 1, Outcome::Completed).await.0,
        StatusCode::OK
    );

    let c2 = app.claim("w2").await.expect("second job");
    let job2 = c2.id;
    assert_eq!(
        app.metrics(job2, 1, 1, None, 0.1).await,
        StatusCode::OK,
        "a NaN loss is stored as null"
    );
    assert_eq!(
        app.finish(job2, 1, Outcome::Diverged).await.0,
        StatusCode::OK
    );
    assert!(app.claim("w1").await.is_none(), "nothing left: 204");

    let detail = app.job(job).await;
    assert_eq!(detail["status"], JobStatus::Completed.as_str());
    assert_eq!(detail["metrics"].as_array().unwrap().len(), 2);
    assert_eq!(detail["metrics"][1]["epoch"], 2);
    assert_eq!(detail["metrics"][1]["attempt"], 1);
    assert_eq!(
        detail["attempts"][0]["outcome"],
        JobStatus::Completed.as_str()
    );
    assert_eq!(detail["summary"]["git_commit"], "abc123");
    let d2 = app.job(job2).await;
    assert_eq!(d2["status"], JobStatus::Diverged.as_str());
    assert!(d2["metrics"][0]["test_loss"].is_null());
    let (_, list) = app.get("/api/sweeps").await;
    assert_eq!(list[0]["status"], SweepStatus::Finished.as_str());
    assert_eq!(
        (list[0]["completed"].as_i64(), list[0]["diverged"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(list[0]["best_accuracy"], 0.5);
}

#[tokio::test]
async fn a_stale_attempt_gets_409_and_changes_nothing() {
    let app = spawn_app().await;
    app.submit_toml(TWO_JOBS).await;
    let c = app.claim("w1").await.unwrap();
    let job = c.id;
    assert_eq!(app.metrics(job, 1, 1, Some(1.0), 0.3).await, StatusCode::OK);

    assert_eq!(app.expire_leases().await, 1);
    let j = app.job(job).await;
    // Pending again with one attempt made; the next claim takes attempt 2.
    assert_eq!(
        (j["status"].as_str(), j["attempt"].as_i64()),
        (Some(JobStatus::Pending.as_str()), Some(1))
    );
    assert_eq!(j["attempts"][0]["outcome"], "lease expired");

    // The old worker wakes up: every write is refused.
    let (s, body) = app
        .send(
            &routes::heartbeat(job),
            &HeartbeatRequest {
                attempt: 1,
                node_rank: None,
            },
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("attempt 1"));
    assert_eq!(
        app.metrics(job, 1, 2, Some(0.9), 0.4).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.finish(job, 1, Outcome::Completed).await.0,
        StatusCode::CONFLICT
    );
    let after = app.job(job).await;
    assert_eq!(after["status"], JobStatus::Pending.as_str());
    assert_eq!(
        after["metrics"].as_array().unwrap().len(),
        1,
        "the stale epoch 2 was not stored"
    );

    // The next claim resumes it as attempt 2; attempt 1 still cannot finish it.
    let c2 = app.claim("w2").await.unwrap();
    assert_eq!((c2.id, c2.attempt), (job, 2));
    assert_eq!(
        app.finish(job, 1, Outcome::Completed).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.metrics(job, 2, 1, Some(0.8), 0.35).await,
        StatusCode::OK,
        "a later attempt replaces its epoch"
    );
    assert_eq!(
        app.finish(job, 2, Outcome::Completed).await.0,
        StatusCode::OK
    );
    let done = app.job(job).await;
    assert_eq!(done["status"], JobStatus::Completed.as_str());
    assert_eq!(done["metrics"][0]["attempt"], 2);
    assert_eq!(done["metrics"][0]["accuracy"], 0.35);
}

#[tokio::test]
async fn leases_renewed_by_heartbeat_do_not_expire() {
    let app = spawn_app().await;
    app.submit_toml(TWO_JOBS).await;
    let job = app.claim("w1").await.unwrap().id;
    for _ in 0..3 {
        app.clock.advance_ms(LEASE_MS / 2);
        assert_eq!(app.heartbeat(job, 1).await.0, StatusCode::OK);
        assert_eq!(server::startup::reap_once(&app.state).await.unwrap(), 0);
    }
    assert_eq!(app.job_detail(job).await.job.status, JobStatus::Running);
}

#[tokio::test]
async fn attempts_run_out_then_the_job_fails_with_the_reason() {
    let app = spawn_app().await;
    let spec = "name = \"retry\"\n[train]\nepochs = 1\n[run]\nmax_attempts = 2\n";
    app.submit_toml(spec).await;
    // Attempt 1: a crashed child is reported as failed and retried.
    let c = app.claim("w1").await.unwrap();
    let job = c.id;
    let failed = FinishRequest {
        node_rank: None,
        attempt: 1,
        status: Outcome::Failed,
        summary: None,
        error: Some("child exited with signal 11".into()),
    };
    let (s, change) = app.send(&routes::finish(job), &failed).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (change["status"].as_str(), change["attempt"].as_i64()),
        (Some(JobStatus::Pending.as_str()), Some(1))
    );
    // Attempt 2: the worker disappears; its lease runs out and no attempt is left.
    let c = app.claim("w2").await.unwrap();
    assert_eq!(c.attempt, 2);
    assert_eq!(app.expire_leases().await, 1);
    let j = app.job(job).await;
    assert_eq!(j["status"], JobStatus::Failed.as_str());
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("lease expired on attempt 2 of 2"),
        "{}",
        j["error"]
    );
    assert_eq!(j["attempts"][0]["error"], "child exited with signal 11");
    assert!(app.claim("w3").await.is_none());
}

#[tokio::test]
async fn cancel_stops_pending_jobs_and_tells_running_ones() {
    let app = spawn_app().await;
    let sweep = app
        .submit("name = \"c\"\n[grid]\nseed = [1, 2, 3]\n")
        .await
        .id;
    let job = app.claim("w1").await.unwrap().id;
    let (s, r) = app
        .post(&format!("/api/sweeps/{sweep}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["cancelled_pending"], 2);
    assert!(
        app.claim("w2").await.is_none(),
        "cancelled jobs are not handed out"
    );
    let hb = app.heartbeat(job, 1).await.1.expect("a heartbeat reply");
    assert!(hb.cancel);
    assert_eq!(
        app.finish(job, 1, Outcome::Cancelled).await.0,
        StatusCode::OK
    );
    let sw = app.sweep(sweep).await;
    assert_eq!(sw.sweep.status, SweepStatus::Cancelled);
    assert!(sw.jobs.iter().all(|j| j.status == JobStatus::Cancelled));
    assert_eq!(
        app.post("/api/sweeps/999/cancel", json!({})).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn repeated_metrics_and_finishes_are_stored_once() {
    let app = spawn_app().await;
    app.submit_toml(TWO_JOBS).await;
    let job = app.claim("w1").await.unwrap().id;
    for _ in 0..3 {
        assert_eq!(app.metrics(job, 1, 1, Some(1.0), 0.3).await, StatusCode::OK);
    }
    assert_eq!(app.job(job).await["metrics"].as_array().unwrap().len(), 1);
    let (s1, a) = app.finish(job, 1, Outcome::Completed).await;
    let (s2, b) = app.finish(job, 1, Outcome::Completed).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a, b);
    assert_eq!(
        app.finish(job, 1, Outcome::Failed).await.0,
        StatusCode::CONFLICT,
        "a different outcome is not a repeat"
    );
    assert_eq!(app.job_detail(job).await.job.status, JobStatus::Completed);
    let (s, _) = app
        .post(
            &format!("/api/jobs/{job}/finish"),
            json!({"attempt": 1, "status": "great"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn concurrent_claims_hand_each_job_out_exactly_once() {
    let app = spawn_app().await;
    let (_, c) = app.submit_toml("name = \"many\"\n[grid]\nseed = [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39]\n").await;
    assert_eq!(c["jobs"], 40);
    let mut tasks = vec![];
    for w in 0..16 {
        let (base, http) = (app.base.clone(), app.http.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            loop {
                let r = http
                    .post(format!("{base}/api/jobs/claim"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"worker": format!("w{w}")}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::NO_CONTENT {
                    return got;
                }
                got.push(
                    r.json::<serde_json::Value>().await.unwrap()["id"]
                        .as_i64()
                        .unwrap(),
                );
            }
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(
        (before, all.len()),
        (40, 40),
        "no job handed out twice, none lost"
    );
}

#[tokio::test]
async fn capacity_limits_what_a_claim_gets() {
    let app = spawn_app().await;
    app.submit_toml("name = \"cap\"\n[train]\nnproc_per_node = 2\n[grid]\nbatch_size = [512, 8]\n")
        .await;
    let with = |ranks, max_batch_size| protocol::ClaimRequest {
        deadline: None,
        rendezvous: None,
        worker: "w".into(),
        capacity: Some(protocol::Capacity {
            ranks,
            max_batch_size,
        }),
        accepts_commands: false,
    };
    assert!(
        app.claim_with(&with(1, None)).await.is_none(),
        "a 2-rank job does not fit 1 free rank"
    );
    let c = app.claim_with(&with(2, Some(16))).await.expect("a claim");
    assert_eq!(
        c.params["batch_size"], 8,
        "the small-batch job fits a packed slot"
    );
}

#[tokio::test]
async fn writes_need_the_token_and_private_servers_guard_reads() {
    let app = spawn_app().await;
    let url = format!("{}/api/sweeps", app.base);
    let r = app
        .http
        .post(&url)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let r = app
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .post(format!("{}/api/jobs/claim", app.base))
        .json(&json!({"worker": "w"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/sweeps").await.0,
        StatusCode::OK,
        "reads are open by default"
    );

    let private = spawn_with(|c| c.private = true).await;
    assert_eq!(private.get("/api/sweeps").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        private
            .http
            .get(format!("{}/healthz", private.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = private
        .http
        .get(format!("{}/api/sweeps", private.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn events_stream_job_changes_and_metrics() {
    use futures::StreamExt;
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = res.bytes_stream();
    app.submit_toml(TWO_JOBS).await;
    let job = app.claim("w1").await.unwrap().id;
    app.metrics(job, 1, 1, Some(1.25), 0.625).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("0.625") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: sweep"), "{text}");
    assert!(
        text.contains("event: job") && text.contains("\"status\":\"running\""),
        "{text}"
    );
    assert!(
        text.contains("event: metrics") && text.contains(&format!("\"job_id\":{job}")),
        "{text}"
    );
}

#[tokio::test]
async fn health_prometheus_and_openapi() {
    let app = spawn_app().await;
    app.submit_toml(TWO_JOBS).await;
    app.claim("w").await.unwrap();
    assert_eq!(app.get_text("/healthz").await, "ok");
    let prom = app.get_text("/metrics").await;
    assert!(prom.contains("sweep_jobs{status=\"pending\"} 1"), "{prom}");
    assert!(prom.contains("sweep_jobs{status=\"running\"} 1"), "{prom}");
    assert!(prom.contains("sweep_jobs{status=\"pruned\"} 0"), "{prom}");
    assert!(prom.contains("sweep_claims_total 1"), "{prom}");
    assert!(
        prom.ends_with("# EOF\n"),
        "OpenMetrics text ends so: {prom}"
    );
    assert!(
        prom.contains("sweep_http_request_duration_seconds_count"),
        "{prom}"
    );
    let (s, doc) = app.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/sweeps",
        "/api/sweeps/{id}",
        "/api/sweeps/{id}/cancel",
        "/api/sweeps/{id}/results",
        "/api/jobs/claim",
        "/api/jobs/{id}",
        "/api/jobs/{id}/heartbeat",
        "/api/jobs/{id}/metrics",
        "/api/jobs/{id}/finish",
        "/api/events",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["MetricsReport"].is_object());
    // Jobs that span nodes (#23): `nnodes` in the sweep file, the gang in the worker protocol.
    let schemas = &doc["components"]["schemas"];
    let train = schemas["SweepFile"]["properties"]["train"]["description"].as_str();
    assert!(train.is_some_and(|d| d.contains("nnodes")), "{train:?}");
    assert_eq!(
        schemas["CommandSpec"]["properties"]["nnodes"]["maximum"],
        1024
    );
    assert!(schemas["ClaimRequest"]["properties"]["rendezvous"].is_object());
    assert!(schemas["Claim"]["properties"]["gang"].is_object());
    assert!(schemas["HeartbeatReply"]["properties"]["gang"].is_object());
    assert!(schemas["GangMember"]["properties"]["node_rank"].is_object());
    // The documented sweep file has exactly the top-level keys the parser accepts: a file setting
    // every documented key is accepted, and one with a key the document lacks is refused.
    let documented: Vec<String> = doc["components"]["schemas"]["SweepFile"]["properties"]
        .as_object()
        .expect("SweepFile's properties")
        .keys()
        .cloned()
        .collect();
    assert!(documented.iter().any(|k| k == "command"), "{documented:?}");
    let example = |key: &str| -> Value {
        match key {
            "name" => json!("every key"),
            "train" => json!({"epochs": 1}),
            "grid" => json!({"lr": [0.1, 0.01]}),
            "search" => json!({"method": "grid"}),
            "early_stop" => json!({"method": "median"}),
            "run" => json!({"max_attempts": 2, "repeats": 1}),
            "command" => json!({"argv": ["true", "{lr}"]}),
            other => panic!("the test has no example of the documented key {other}"),
        }
    };
    let every: serde_json::Map<String, Value> =
        documented.iter().map(|k| (k.clone(), example(k))).collect();
    let (status, body) = app.post("/api/sweeps", Value::Object(every)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post("/api/sweeps", json!({"name": "x", "resources": {}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// The oldest pending job that fits, found by reading every row: what a claim must hand out.
async fn oldest_that_fits(
    db: &mut sqlx::SqliteConnection,
    ranks: i64,
    max_batch: Option<i64>,
    commands: bool,
) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT j.id FROM jobs j JOIN sweeps s ON s.id = j.sweep_id
         WHERE j.status = 'pending' AND j.cancel_requested = 0 AND j.stop_requested = 0
           AND s.cancelled_at IS NULL AND j.nproc <= ?1 AND (?2 IS NULL OR j.batch_size <= ?2)
           AND (?3 OR j.is_command = 0)
         ORDER BY j.id LIMIT 1",
    )
    .bind(ranks)
    .bind(max_batch)
    .bind(commands)
    .fetch_optional(db)
    .await
    .unwrap()
}

type Counts = Vec<(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64)>;

/// Each sweep's counts as the triggers keep them, beside the same counted from every job.
async fn sweep_counts(db: &mut sqlx::SqliteConnection) -> (Counts, Counts) {
    let kept = sqlx::query_as(
        "SELECT sweep_id, total, pending, running, completed, diverged, failed, cancelled, pruned,
                epochs_spent, epochs_budget FROM sweep_counts ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let counted = sqlx::query_as(
        "SELECT s.id, count(j.id), coalesce(sum(j.status = 'pending'), 0), coalesce(sum(j.status = 'running'), 0),
                coalesce(sum(j.status = 'completed'), 0), coalesce(sum(j.status = 'diverged'), 0),
                coalesce(sum(j.status = 'failed'), 0), coalesce(sum(j.status = 'cancelled'), 0),
                coalesce(sum(j.status = 'pruned'), 0), coalesce(sum(j.epoch), 0), coalesce(sum(j.epochs), 0)
         FROM sweeps s LEFT JOIN jobs j ON j.sweep_id = s.id GROUP BY s.id ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    (kept, counted)
}

/// The pending jobs counted by shape from every row, beside the counts the triggers keep.
async fn pending_shapes(
    db: &mut sqlx::SqliteConnection,
) -> (
    Vec<(i64, i64, i64, i64, i64)>,
    Vec<(i64, i64, i64, i64, i64)>,
) {
    let kept = sqlx::query_as(
        "SELECT nproc, batch_size, is_command, drawn, jobs FROM pending_shapes ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let counted = sqlx::query_as(
        "SELECT nproc, batch_size, is_command, drawn_at IS NOT NULL, count(*) FROM jobs
         WHERE status = 'pending' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    (kept, counted)
}

#[tokio::test]
async fn claims_take_the_oldest_job_that_fits_and_kept_counts_follow_every_transition() {
    use sqlx::Connection;
    let app = spawn_app().await;
    // Shapes of every kind, the big ones oldest: 4-rank jobs with large batches, 1-rank ones, a
    // 2-rank command sweep, and a sweep that will be cancelled half-way.
    app.submit("name = \"big\"\n[train]\nnproc_per_node = 4\n[run]\nmax_attempts = 2\n[grid]\nbatch_size = [512, 256, 8]\nseed = [1, 2, 3, 4]\n").await;
    app.submit("name = \"small\"\n[train]\n[run]\nmax_attempts = 3\n[grid]\nbatch_size = [8, 16, 32, 64]\nseed = [1, 2, 3, 4, 5]\n").await;
    app.submit("name = \"cmd\"\n[command]\nargv = [\"run\", \"{q}\"]\nranks = 2\n[grid]\nq = [1, 2, 3, 4, 5, 6]\n").await;
    let doomed = app
        .submit("name = \"doomed\"\n[train]\n[grid]\nbatch_size = [32, 600]\nseed = [1, 2, 3, 4]\n")
        .await
        .id;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut running: Vec<(i64, i64)> = vec![];
    let mut claims = 0;
    for step in 0..400 {
        match next(10) {
            0..=4 => {
                let ranks = 1 + next(4) as i64;
                let max_batch = [None, Some(16), Some(64), Some(300), Some(1000)][next(5) as usize];
                let commands = next(2) == 1;
                let want = oldest_that_fits(&mut db, ranks, max_batch, commands).await;
                let req = protocol::ClaimRequest {
                    deadline: None,
                    rendezvous: None,
                    worker: format!("w{step}"),
                    capacity: Some(protocol::Capacity {
                        ranks,
                        max_batch_size: max_batch,
                    }),
                    accepts_commands: commands,
                };
                let got = app.claim_with(&req).await;
                assert_eq!(
                    got.as_ref().map(|c| c.id),
                    want,
                    "step {step}: {ranks} ranks, batch {max_batch:?}, commands {commands}"
                );
                if let Some(c) = got {
                    running.push((c.id, c.attempt));
                    claims += 1;
                }
            }
            5 if !running.is_empty() => {
                let (job, attempt) = running[next(running.len() as u64) as usize];
                let epoch = 1 + next(2) as i64;
                app.metrics(job, attempt, epoch, Some(1.0), 0.5).await;
            }
            6 if !running.is_empty() => {
                let (job, attempt) = running.swap_remove(next(running.len() as u64) as usize);
                let outcome =
                    [Outcome::Failed, Outcome::Completed, Outcome::Diverged][next(3) as usize];
                assert_eq!(app.finish(job, attempt, outcome).await.0, StatusCode::OK);
            }
            7 if !running.is_empty() => {
                let (job, attempt) = running.swap_remove(next(running.len() as u64) as usize);
                assert_eq!(app.release(job, attempt).await.0, StatusCode::OK);
            }
            8 if step % 7 == 0 => {
                app.expire_leases().await;
                running.clear();
            }
            _ => {}
        }
        if step == 200 {
            let (s, _) = app
                .post(&format!("/api/sweeps/{doomed}/cancel"), json!({}))
                .await;
            assert_eq!(s, StatusCode::OK);
        }
        let (kept, counted) = pending_shapes(&mut db).await;
        assert_eq!(
            kept, counted,
            "step {step}: the kept shapes equal a recount"
        );
        let (kept, counted) = sweep_counts(&mut db).await;
        assert_eq!(
            kept, counted,
            "step {step}: the kept sweep counts equal a recount"
        );
    }
    let (s, unfinished) = app.get("/api/jobs/unfinished").await;
    assert_eq!(s, StatusCode::OK);
    let (pending, running): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(status = 'pending'), 0), coalesce(sum(status = 'running'), 0) FROM jobs",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(unfinished, json!({"pending": pending, "running": running}));
    assert!(
        claims > 50,
        "the sequence exercised the claim ({claims} claims)"
    );
}
