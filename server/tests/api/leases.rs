//! Only the lease holder may write (#24, finding 1): the attempt number is public, so every write of
//! an attempt must carry its claim's secret. Tried as an attacker holding only the worker token.
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Each worker write of another worker's job, with the worker token and the right attempt but
/// without the claim's secret (or with another), is refused with 403 and stores nothing; the
/// holder's own writes go on.
#[tokio::test]
async fn a_worker_token_without_the_lease_secret_cannot_write_to_a_job() {
    let app = spawn_app().await;
    app.submit_toml("name = \"victim\"\n[train]\nepochs = 3\n")
        .await;
    let c = app.claim("victim").await.unwrap();
    let job = c.id;
    assert_eq!(c.lease_secret.len(), 64, "256 random bits, hex");
    let (_, doc) = app.get(&format!("/api/jobs/{job}")).await;
    assert!(
        !doc.to_string().contains(&c.lease_secret),
        "no read shows it"
    );
    let attacks: [(&str, Value); 4] = [
        (
            "metrics",
            json!({"attempt": 1, "epoch": 1, "accuracy": 0.999}),
        ),
        ("heartbeat", json!({"attempt": 1})),
        (
            "finish",
            json!({"attempt": 1, "status": Outcome::Completed}),
        ),
        ("release", json!({"attempt": 1})),
    ];
    for secret in [None, Some("0".repeat(64))] {
        for (route, body) in &attacks {
            let mut req = app
                .http
                .post(format!("{}/api/jobs/{job}/{route}", app.base))
                .bearer_auth(WORKER_TOKEN)
                .json(body);
            if let Some(s) = &secret {
                req = req.header(protocol::LEASE_SECRET_HEADER, s);
            }
            let status = req.send().await.unwrap().status();
            assert_eq!(status, StatusCode::FORBIDDEN, "{route} with {secret:?}");
        }
        let raw = |method: Method, path: String| {
            let mut req = app
                .http
                .request(method, format!("{}{path}", app.base))
                .bearer_auth(WORKER_TOKEN)
                .body("x");
            if let Some(s) = &secret {
                req = req.header(protocol::LEASE_SECRET_HEADER, s);
            }
            req.send()
        };
        let upload = raw(Method::PUT, format!("/api/jobs/{job}/checkpoint?attempt=1"));
        assert_eq!(upload.await.unwrap().status(), StatusCode::FORBIDDEN);
        let log = raw(
            Method::POST,
            format!("/api/jobs/{job}/log?attempt=1&offset=0"),
        );
        assert_eq!(log.await.unwrap().status(), StatusCode::FORBIDDEN);
    }
    // Nothing of it was stored: no metrics, no log, still running under the victim.
    let detail = app.job_detail(job).await;
    assert!(detail.metrics.is_empty());
    assert_eq!(detail.job.status, JobStatus::Running);
    assert_eq!(detail.job.worker.as_deref(), Some("victim"));
    assert!(!app.state.artifacts.join(format!("job-{job}")).exists());
    // The holder writes as before.
    assert_eq!(app.metrics(job, 1, 1, Some(1.0), 0.5).await, StatusCode::OK);
    assert_eq!(app.heartbeat(job, 1).await.0, StatusCode::OK);
}

/// A checkpoint is read only by the holder of the job's current lease or with the admin token;
/// never anonymously, never with a worker token alone.
#[tokio::test]
async fn a_checkpoint_is_read_only_by_its_lease_holder_or_the_admin() {
    let app = spawn_app().await;
    app.submit_toml("name = \"c\"\n[train]\nepochs = 3\n").await;
    let c = app.claim("w").await.unwrap();
    let path = format!("/api/jobs/{}/checkpoint?attempt=1", c.id);
    let put = app
        .holding(app.http.put(format!("{}{path}", app.base)), &path)
        .bearer_auth(WORKER_TOKEN)
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let get = |token: Option<&str>, secret: Option<&str>| {
        let mut req = app
            .http
            .get(format!("{}/api/jobs/{}/checkpoint", app.base, c.id));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = secret {
            req = req.header(protocol::LEASE_SECRET_HEADER, s);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(get(None, None).await, StatusCode::FORBIDDEN);
    assert_eq!(get(Some(WORKER_TOKEN), None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        get(Some(WORKER_TOKEN), Some("nope")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(Some(WORKER_TOKEN), Some(&c.lease_secret)).await,
        StatusCode::OK
    );
    assert_eq!(get(Some(TOKEN), None).await, StatusCode::OK);
}

/// A lost lease is still "lost" (409) with its own old secret, the new holder's secret is another,
/// and a retried finish of an ended attempt with its secret is answered as before.
#[tokio::test]
async fn old_secrets_stay_409_and_a_retried_finish_is_idempotent() {
    let app = spawn_app().await;
    app.submit_toml("name = \"r\"\n[train]\nepochs = 3\n").await;
    let first = app.claim("a").await.unwrap();
    app.expire_leases().await;
    let second = app.claim("b").await.unwrap();
    assert_eq!((second.id, second.attempt), (first.id, 2));
    assert_ne!(first.lease_secret, second.lease_secret);
    let old = app
        .send_as(
            Method::POST,
            &protocol::routes::heartbeat(first.id),
            Some(WORKER_TOKEN),
            Some(json!({"attempt": 1})),
        )
        .await;
    assert_eq!(old.0, StatusCode::CONFLICT, "{old:?}");
    // The holder finishes; the same finish again (a retry after a lost reply) is answered alike.
    let (s1, a) = app.finish(second.id, 2, Outcome::Completed).await;
    let (s2, b) = app.finish(second.id, 2, Outcome::Completed).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{a} {b}");
    assert_eq!(a, b);
}
