//! The coordinator under careless and hostile clients (issue 13): each test reproduces a finding the
//! way it was found, against the real server on port 0, and asserts that it no longer happens.
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const THREE_JOBS: &str =
    "name = \"three\"\n[train]\nepochs = 3\n[grid]\nbatch_size = [8, 16, 32]\n[run]\nmax_attempts = 3\n";

/// 1. A cancel sticks, whatever races it: a failed finish, a release, a lease expiry.
#[tokio::test]
async fn a_cancelled_sweeps_jobs_never_run_again() {
    let app = spawn_app().await;
    let sweep = app.submit(THREE_JOBS).await.id;
    let ids: Vec<i64> = [
        app.claim("w").await,
        app.claim("w").await,
        app.claim("w").await,
    ]
    .iter()
    .map(|c| c.as_ref().unwrap().id)
    .collect();
    app.post(&format!("/api/sweeps/{sweep}/cancel"), json!({}))
        .await;
    let (_, hb) = app
        .post(
            &format!("/api/jobs/{}/heartbeat", ids[0]),
            json!({"attempt": 1}),
        )
        .await;
    assert_eq!(hb["cancel"], true);
    // The worker of job 0 fails it, job 1's releases it, job 2's vanishes.
    let (s, f) = app.finish(ids[0], 1, Outcome::Failed).await;
    assert_eq!(
        (s, f["status"].as_str()),
        (StatusCode::OK, Some(JobStatus::Cancelled.as_str()))
    );
    let (s, r) = app
        .post(
            &format!("/api/jobs/{}/release", ids[1]),
            json!({"attempt": 1}),
        )
        .await;
    assert_eq!(
        (s, r["status"].as_str()),
        (StatusCode::OK, Some(JobStatus::Cancelled.as_str()))
    );
    assert_eq!(app.expire_leases().await, 1);
    assert_eq!(
        app.job_detail(ids[2]).await.job.status,
        JobStatus::Cancelled
    );
    assert!(
        app.claim("w").await.is_none(),
        "nothing is handed out again"
    );
    let (_, s) = app.get(&format!("/api/sweeps/{sweep}")).await;
    assert_eq!(
        (s["running"].as_i64(), s["pending"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["cancelled"], 3);
}

/// 2. A sweep with a 140,000-value axis (869 KB) is refused from its length, at once, while the
/// server keeps answering others.
#[tokio::test]
async fn a_huge_axis_is_refused_at_once_and_the_server_stays_responsive() {
    let app = spawn_app().await;
    let seeds: Vec<i64> = (0..140_000).collect();
    let body = json!({"name": "big", "grid": {"seed": seeds}});
    let t0 = Instant::now();
    let (submit, health) = tokio::join!(app.post("/api/sweeps", body.clone()), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let r = app.http.get(format!("{}/healthz", app.base)).send().await;
        (r.map(|r| r.status()), t.elapsed())
    });
    let took = t0.elapsed();
    assert_eq!(submit.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", submit.1);
    assert!(
        submit.1["error"].as_str().unwrap().starts_with("grid"),
        "{}",
        submit.1
    );
    // 22 s before the fix (a quadratic duplicate check before the size limit); the margin is wide.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(health.0.unwrap(), StatusCode::OK);
    assert!(
        health.1 < Duration::from_secs(5),
        "healthz took {:?}",
        health.1
    );
    // The largest allowed axis with a duplicate at its very end is found in linear time.
    let mut seeds: Vec<i64> = (0..10_000).collect();
    seeds[9_999] = 0;
    let t0 = Instant::now();
    let (s, e) = app
        .post(
            "/api/sweeps",
            json!({"name": "dup", "grid": {"seed": seeds}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"], "grid.seed[9999]: duplicate value 0");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// 3. Extreme (but finite) losses are drawn, not looped on; absurd ones are refused at the edge.
#[tokio::test]
async fn figures_of_extreme_values_answer_promptly() {
    let app = spawn_app().await;
    app.submit_toml("name = \"f\"\n[train]\nepochs = 3\n").await;
    let job = app.claim("w").await.unwrap().id;
    assert_eq!(app.metrics(job, 1, 1, Some(2.3), 0.1).await, StatusCode::OK);
    assert_eq!(
        app.metrics(job, 1, 2, Some(1.7e308), 0.1).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "beyond anything an fp32 trainer reports"
    );
    assert_eq!(
        app.metrics(job, 1, 2, Some(3e38), 0.1).await,
        StatusCode::OK
    );
    let sweep = app.job(job).await["sweep_id"].as_i64().unwrap();
    for name in ["loss", "acc", "lr", "loss"] {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            app.http
                .get(format!(
                    "{}/api/sweeps/{sweep}/figures/{name}.png",
                    app.base
                ))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}.png never answered"))
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
    }
    // Figures are cached while the sweep is unchanged, and drawn anew when an epoch arrives.
    let loss = |app: &TestApp| {
        let url = format!("{}/api/sweeps/{sweep}/figures/loss.png", app.base);
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    let (a, b) = (loss(&app).await, loss(&app).await);
    assert_eq!(a, b);
    assert_eq!(app.metrics(job, 1, 3, Some(1.0), 0.2).await, StatusCode::OK);
    assert_ne!(loss(&app).await, a, "a new epoch shows in the figure");
}

/// Whether the server closes this connection (EOF or an error) within `secs`; whatever it sends
/// first (a 408, an answer) is read and dropped.
async fn closed_within(stream: &mut tokio::net::TcpStream, secs: u64) -> bool {
    let mut buf = vec![0u8; 1024];
    tokio::time::timeout(Duration::from_secs(secs), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// 4. Clients that send half a request line are dropped after the header timeout, and past the
/// connection limit others still get answers.
#[tokio::test]
async fn slow_clients_are_dropped_and_cannot_exhaust_the_server() {
    let app = spawn_with(|c| {
        c.max_connections = 8;
        c.header_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut slow = vec![];
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HT").await.unwrap();
        slow.push(s);
    }
    // Health checks get through: slow connections are closed after a second, freeing the slots.
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        app.http.get(format!("{}/healthz", app.base)).send(),
    )
    .await
    .expect("healthz answered")
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(t0.elapsed() < Duration::from_secs(20));
    // The first slow clients were served and then closed by the server (EOF, or a 408 then EOF).
    let mut first = slow.remove(0);
    assert!(
        closed_within(&mut first, 10).await,
        "the server never closed a slow connection"
    );
    // A connection that sends nothing at all is closed too (idle clients hold no slot).
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut idle, 10).await,
        "the server never closed an idle connection"
    );
    // And a keep-alive connection that went quiet after a request.
    let mut quiet = tokio::net::TcpStream::connect(&addr).await.unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut quiet, 10).await,
        "the server never closed a quiet keep-alive connection"
    );
}

/// 5. A write whose transaction cannot begin (another process holds the file's write lock) stores
/// nothing and says so; a retry afterwards stores the sweep once.
#[tokio::test]
async fn a_write_that_cannot_begin_stores_nothing() {
    use sqlx::Connection;
    let app = spawn_with(|c| c.busy_timeout = Duration::from_millis(200)).await;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let (s, e) = app.submit_toml(THREE_JOBS).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let (_, list) = app.get("/api/sweeps").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "nothing of it was stored"
    );
    let (s, c) = app.submit_toml(THREE_JOBS).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(c["jobs"], 3);
    let (_, list) = app.get("/api/sweeps").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// 6. The worker token speaks the worker protocol only; a sweep cannot point workers at paths
/// outside their roots, nor at a URL.
#[tokio::test]
async fn roles_and_paths() {
    let app = spawn_app().await;
    let w = Some(WORKER_TOKEN);
    let (s, _) = app
        .send_as(Method::POST, "/api/sweeps", w, Some(json!({"name": "x"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a worker token cannot submit");
    app.submit_toml(THREE_JOBS).await;
    let (s, claim) = app
        .send_as(
            Method::POST,
            "/api/jobs/claim",
            w,
            Some(json!({"worker": "w"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{claim}");
    let job = serde_json::from_value::<protocol::Claim>(claim.clone())
        .unwrap()
        .id;
    for (path, body) in [
        (format!("/api/jobs/{job}/heartbeat"), json!({"attempt": 1})),
        (
            format!("/api/jobs/{job}/metrics"),
            json!({"attempt": 1, "epoch": 1, "accuracy": 0.5}),
        ),
    ] {
        let (s, v) = app.send_as(Method::POST, &path, w, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (s, _) = app
        .send_as(
            Method::POST,
            &format!("/api/sweeps/{}/cancel", claim["sweep_id"]),
            w,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a worker token cannot cancel");
    let (s, _) = app
        .send_as(
            Method::POST,
            "/api/sweeps",
            Some("wrong"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for (train, field) in [
        (json!({"data_dir": "/etc"}), "train.data_dir"),
        (json!({"data_dir": "cifar/../../.."}), "train.data_dir"),
        (json!({"init_from": "/root/.ssh/id_rsa"}), "train.init_from"),
        (json!({"init_from": "../x.safetensors"}), "train.init_from"),
        (
            json!({"data_url": "http://169.254.169.254/"}),
            "train.data_url",
        ),
        (json!({"data_md5": "00"}), "train.data_md5"),
    ] {
        let (s, e) = app
            .post("/api/sweeps", json!({"name": "p", "train": train}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{train}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
    let (s, _) = app
        .post("/api/sweeps", json!({"name": "ok", "train": {"data_dir": "cifar10-mini", "init_from": "weights/start.safetensors"}}))
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "relative names under the worker's roots are fine"
    );
}

/// 7. Bytes are bounded: string values, what a sweep stores, and what an anonymous read returns.
#[tokio::test]
async fn bytes_are_bounded() {
    let app = spawn_app().await;
    let long = "d".repeat(20_000);
    let (s, e) = app
        .post(
            "/api/sweeps",
            json!({"name": "s", "train": {"data_dir": long}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["error"].as_str().unwrap().contains("longer than 1024"),
        "{e}"
    );
    // 1 KB strings x 2 keys x 100,000 jobs: over the sweep's budget, refused before storing.
    let seeds: Vec<i64> = (0..100_000).collect();
    let (s, e) = app
        .post(
            "/api/sweeps",
            json!({"name": "s", "train": {"data_dir": "d".repeat(1000), "init_from": "i".repeat(1000)},
                   "grid": {"seed": seeds}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"].as_str().unwrap().contains("MiB"), "{e}");
    // A large sweep is paged: an anonymous read gets the first 1000 jobs and the total.
    let seeds: Vec<i64> = (0..2_500).collect();
    let (s, c) = app
        .post(
            "/api/sweeps",
            json!({"name": "many", "grid": {"seed": seeds}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, sw) = app
        .send_as(Method::GET, &format!("/api/sweeps/{}", c["id"]), None, None)
        .await;
    assert_eq!(sw["jobs"].as_array().unwrap().len(), 1000);
    assert_eq!(sw["total"], 2500);
    let (_, sw) = app
        .get(&format!("/api/sweeps/{}?limit=5000", c["id"]))
        .await;
    assert_eq!(sw["jobs"].as_array().unwrap().len(), 2500);
}

/// 8. Numbers that would overflow later arithmetic are refused at the edge.
#[tokio::test]
async fn overflowing_numbers_are_refused() {
    let app = spawn_app().await;
    for (body, field) in [
        (
            json!({"name": "o", "train": {"seed": i64::MAX}, "run": {"repeats": 2}}),
            "train.seed",
        ),
        (
            json!({"name": "o", "train": {"epochs": i64::MAX}}),
            "train.epochs",
        ),
        (
            json!({"name": "o", "train": {"epochs": u64::MAX}}),
            "train.epochs",
        ),
        (
            json!({"name": "o", "grid": {"batch_size": [1, i64::MAX]}}),
            "grid.batch_size[1]",
        ),
        (
            json!({"name": "o", "train": {"milestones": [1, i64::MAX]}}),
            "train.milestones",
        ),
    ] {
        let (s, e) = app.post("/api/sweeps", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
    let (s, _) = app.get("/healthz").await;
    assert_eq!(s, StatusCode::OK, "no handler panicked the connection away");
}

/// 9. Acknowledged writes are durable through power loss: the store runs with synchronous=FULL.
#[tokio::test]
async fn the_store_syncs_every_commit() {
    let app = spawn_app().await;
    assert_eq!(app.state.store.synchronous().await.unwrap(), 2, "FULL");
}

/// 10. Metrics are checked: an epoch past the job's last, out-of-range fractions, negative rates.
#[tokio::test]
async fn impossible_metrics_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.submit_toml("name = \"m\"\n[train]\nepochs = 3\n").await;
    let job = app.claim("w").await.unwrap().id;
    let path = format!("/api/jobs/{job}/metrics");
    for (body, field) in [
        (
            json!({"attempt": 1, "epoch": 1_000_000, "accuracy": 0.5}),
            "epoch",
        ),
        (json!({"attempt": 1, "epoch": 0}), "epoch"),
        (
            json!({"attempt": 1, "epoch": 1, "accuracy": -5.0}),
            "accuracy",
        ),
        (
            json!({"attempt": 1, "epoch": 1, "accuracy": 1e300}),
            "accuracy",
        ),
        (json!({"attempt": 1, "epoch": 1, "lr": -1.0}), "lr"),
        (json!({"attempt": 1, "epoch": 1, "f1": 1.5}), "f1"),
    ] {
        let (s, e) = app.post(&path, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
    assert_eq!(app.job(job).await["metrics"].as_array().unwrap().len(), 0);
    assert_eq!(app.metrics(job, 1, 3, Some(0.5), 0.9).await, StatusCode::OK);
}

/// 11. `--private` keeps the dashboard usable (a session cookie after the token is given once), a
/// foreign Host is refused, and every response carries nosniff and a CSP without inline scripts.
#[tokio::test]
async fn a_private_dashboard_works_with_a_session_and_foreign_hosts_are_refused() {
    let app = spawn_with(|c| c.private = true).await;
    for page in ["/", "/app.js", "/style.css"] {
        let r = app
            .http
            .get(format!("{}{page}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{page} holds no data");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
    }
    let (s, _) = app.send_as(Method::GET, "/api/sweeps", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .send_as(
            Method::POST,
            "/api/session",
            None,
            Some(json!({"token": "wrong"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let set = sign_in(&app).await;
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = |m: Method, p: &str| {
        app.http
            .request(m, format!("{}{p}", app.base))
            .header("cookie", cookie.clone())
    };
    assert_eq!(
        with_cookie(Method::GET, "/api/sweeps")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let events = with_cookie(Method::GET, "/api/events")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(events);
    let r = with_cookie(Method::POST, "/api/sweeps")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a cookie never authorises a write"
    );
    // DNS rebinding: the page's origin resolves to us, but its Host header names the attacker.
    let r = app
        .http
        .get(format!("{}/", app.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let port = app.base.rsplit(':').next().unwrap();
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// 12. Tokens: the scheme is case-insensitive; empty or group/world-readable token files are refused
/// with the reason.
#[tokio::test]
async fn token_files_and_schemes() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let r = app
        .http
        .post(format!("{}/api/sweeps", app.base))
        .header("authorization", format!("bearer {TOKEN}"))
        .json(&json!({"name": "lower"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let dir = tempfile::tempdir().unwrap();
    let serve = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("t.db"))
            .arg("--token-file")
            .arg(file)
            .env_remove("SWEEP_TOKEN")
            .output()
            .unwrap()
    };
    let open = dir.path().join("open.token");
    std::fs::write(&open, "secret\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve(&open);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readable by group or others"),
        "{out:?}"
    );
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = serve(&empty);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is empty"),
        "{out:?}"
    );
}

/// 13. A finished job's checkpoint is deleted; uploads of one attempt do not share a temp name.
#[tokio::test]
async fn checkpoints_of_finished_jobs_are_deleted() {
    let app = spawn_app().await;
    app.submit_toml("name = \"c\"\n[train]\nepochs = 1\n").await;
    let job = app.claim("w").await.unwrap().id;
    let put = |bytes: Vec<u8>| {
        app.http
            .put(format!("{}/api/jobs/{job}/checkpoint?attempt=1", app.base))
            .header(protocol::LEASE_SECRET_HEADER, app.secret(job))
            .bearer_auth(WORKER_TOKEN)
            .body(bytes)
            .send()
    };
    let (a, b) = tokio::join!(put(vec![1u8; 1 << 20]), put(vec![2u8; 1 << 20]));
    assert_eq!(
        (a.unwrap().status(), b.unwrap().status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let got = app
        .http
        .get(format!("{}/api/jobs/{job}/checkpoint", app.base))
        .header(protocol::LEASE_SECRET_HEADER, app.secret(job))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert!(
        got.iter().all(|&x| x == got[0]),
        "one upload whole, not a mix of two"
    );
    let dir = app.state.artifacts.join(format!("job-{job}"));
    assert!(dir.exists());
    app.finish(job, 1, Outcome::Completed).await;
    assert!(!dir.exists(), "deleted when the job ended");
    let r = app
        .http
        .get(format!("{}/api/jobs/{job}/checkpoint", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// 14. CSV cells that a spreadsheet would run as formulas are neutralised; CR is quoted.
#[tokio::test]
async fn csv_export_neutralises_formulas() {
    let app = spawn_app().await;
    let (_, c) = app
        .submit_toml("name = \"csv\"\n[train]\nepochs = 1\n[run]\nmax_attempts = 1\n")
        .await;
    let (_, claim) = app
        .post("/api/jobs/claim", json!({"worker": "=cmd|'/c calc'!A1"}))
        .await;
    let job = serde_json::from_value::<protocol::Claim>(claim).unwrap().id;
    let failed = protocol::FinishRequest {
        node_rank: None,
        attempt: 1,
        status: protocol::Outcome::Failed,
        summary: None,
        error: Some("@SUM(1)\r\nline".into()),
    };
    app.send(&protocol::routes::finish(job), &failed).await;
    let csv = app
        .get_text(&format!("/api/sweeps/{}/results?format=csv", c["id"]))
        .await;
    assert!(csv.contains(",'=cmd|'/c calc'!A1,"), "{csv}");
    assert!(csv.contains("\"'@SUM(1)\r\nline\""), "{csv}");
    assert!(!csv.contains(",=cmd"), "{csv}");
}

/// The reply of a claim says how long the lease is, so a worker can heartbeat inside it (16; the
/// worker side is tested in worker/tests/service.rs).
#[tokio::test]
async fn a_claim_states_its_lease() {
    let app = spawn_app().await;
    app.submit_toml("name = \"l\"\n").await;
    let c = app.claim("w").await.unwrap();
    assert_eq!(c.lease_ms, Some(LEASE_MS));
}

/// The request time limit (tower-http's timeout layer) bounds ordinary requests but not the
/// streams that are long by design: an event stream outlives it.
#[tokio::test]
async fn the_event_stream_outlives_the_request_time_limit() {
    let app =
        crate::helpers::spawn_with(|c| c.request_timeout = std::time::Duration::from_millis(300))
            .await;
    let mut stream = app
        .http
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), reqwest::StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    // Past the limit the stream is still open: an event submitted now arrives on it.
    app.submit_toml(crate::helpers::TWO_JOBS).await;
    let mut seen = String::new();
    while !seen.contains("event: sweep") && !seen.contains("event: job") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(app.get("/healthz").await.0, reqwest::StatusCode::OK);
}

/// Trades the admin token for a dashboard session: the `Set-Cookie` header.
pub(crate) async fn sign_in(app: &TestApp) -> String {
    let r = app
        .http
        .post(format!("{}/api/session", app.base))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    r.headers()["set-cookie"].to_str().unwrap().to_string()
}

/// A dashboard session lasts `--session-hours` and `DELETE /api/session` ends it (sessions used
/// to last until a restart); one client address holds at most its share of the event streams
/// (one client could hold all 256), and a stream it closes is its to open again.
#[tokio::test]
async fn sessions_expire_and_end_and_one_client_cannot_hold_every_event_stream() {
    let app = spawn_with(|c| {
        c.private = true;
        c.session_ttl = Duration::from_secs(3600);
        c.max_event_streams_per_client = 3;
    })
    .await;
    let session = || async {
        let set = sign_in(&app).await;
        assert!(set.contains("Max-Age=3600"), "{set}");
        set.split(';').next().unwrap().to_string()
    };
    let with = |m: Method, cookie: &str| {
        app.http
            .request(m, format!("{}/api/session", app.base))
            .header("cookie", cookie)
    };
    let app = &app;
    let reads = |cookie: String| async move {
        app.http
            .get(format!("{}/api/sweeps", app.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
    };
    let a = session().await;
    assert_eq!(reads(a.clone()).await, StatusCode::OK);
    app.clock.advance_ms(3_599_000);
    assert_eq!(reads(a.clone()).await, StatusCode::OK);
    app.clock.advance_ms(2_000);
    assert_eq!(reads(a).await, StatusCode::UNAUTHORIZED, "expired");
    let b = session().await;
    assert_eq!(reads(b.clone()).await, StatusCode::OK);
    let r = with(Method::DELETE, &b).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(reads(b).await, StatusCode::UNAUTHORIZED, "ended");

    let open = || async {
        app.http
            .get(format!("{}/api/events", app.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    };
    let mut streams = vec![];
    for _ in 0..3 {
        let r = open().await;
        assert_eq!(r.status(), StatusCode::OK);
        streams.push(r);
    }
    let r = open().await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("from this address"));
    // A closed stream is noticed when the coordinator next writes to it: publish until it is.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        app.state.publish(server::http::events::Event::Sweep {
            sweep_id: 0,
            status: protocol::SweepStatus::Running,
        });
        let r = open().await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream was never counted out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
