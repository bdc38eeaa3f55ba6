//! Workers that know when their allocation ends (#39): a claim with a deadline is handed only a
//! job whose next epoch is expected to commit before it (the job's own spacing of reports, else
//! its sweep's estimate for its shape, else no estimate: handed out), a passed-over job says why,
//! and the pending work is counted by what it needs of a worker (what an autoscaler reads).
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

fn sweep_of(name: &str, seeds: &str) -> String {
    format!(
        "name = \"{name}\"\n[train]\ndataset = \"synthetic\"\nepochs = 4\n[grid]\nseed = {seeds}\n"
    )
}

fn near_end(app: &TestApp, worker: &str, left_ms: i64) -> protocol::ClaimRequest {
    protocol::ClaimRequest {
        worker: worker.into(),
        capacity: None,
        accepts_commands: false,
        rendezvous: None,
        deadline: Some(app.clock.now_ms() + left_ms),
    }
}

#[tokio::test]
async fn a_worker_near_its_end_is_handed_only_jobs_whose_next_epoch_fits() {
    let app = spawn_app().await;
    let long = app.submit(&sweep_of("long", "[1, 2]")).await.id;
    let short = app.submit(&sweep_of("short", "[3, 4]")).await.id;
    let ids = |d: protocol::views::SweepDetail| d.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let (l, s) = (ids(app.sweep(long).await), ids(app.sweep(short).await));

    // The long sweep's first job records two epochs a minute apart (the first timed from its
    // claim), then its worker gives it back: it is pending again, with 60 s per epoch of its own.
    let c = app.claim("w1").await.unwrap();
    assert_eq!(c.id, l[0]);
    for epoch in 1..=2 {
        app.clock.advance_ms(60_000);
        let status = app.metrics(c.id, c.attempt, epoch, Some(1.0), 0.5).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(app.release(c.id, c.attempt).await.0, StatusCode::OK);
    let c = app
        .claim_with(&near_end(&app, "w2", 3_600_000))
        .await
        .unwrap();
    assert_eq!(c.id, l[0], "an hour left: the oldest job fits");
    app.release(c.id, c.attempt).await;
    // The short sweep's first job takes 10 s for its epoch, and completes.
    let l1 = app.claim("w3").await.unwrap();
    assert_eq!(l1.id, l[0]);
    let l2 = app.claim("w3").await.unwrap();
    assert_eq!(l2.id, l[1]);
    let s0 = app.claim("w3").await.unwrap();
    assert_eq!(s0.id, s[0]);
    app.clock.advance_ms(10_000);
    app.metrics(s0.id, s0.attempt, 1, Some(1.0), 0.5).await;
    app.finish(s0.id, s0.attempt, protocol::Outcome::Completed)
        .await;
    app.release(l1.id, l1.attempt).await;
    app.release(l2.id, l2.attempt).await;

    // 30 s left: l[0] (60 s per epoch, its own) and l[1] (its sweep's 60 s) are passed over for the
    // younger s[1] (its sweep's 10 s).
    let c = app.claim_with(&near_end(&app, "tight", 30_000)).await;
    assert_eq!(c.map(|c| c.id), Some(s[1]), "the job that fits");
    let waiting = app.job_detail(l[0]).await.waiting;
    assert_eq!(
        waiting.as_deref(),
        Some("needs about 60 s per epoch; the worker had 30 s left"),
        "the passed-over job says why"
    );
    assert!(app
        .claim_with(&near_end(&app, "tight", 30_000))
        .await
        .is_none());
    // Enough time: the oldest is handed out again, and no longer says it was passed over.
    let c = app
        .claim_with(&near_end(&app, "roomy", 61_000))
        .await
        .unwrap();
    assert_eq!(c.id, l[0]);
    assert_eq!(app.job_detail(l[0]).await.waiting, None);

    // A sweep nothing has been measured of: its jobs are handed out however little is left (the
    // give-back protects the work).
    let fresh = app.submit(&sweep_of("fresh", "[5]")).await.id;
    let c = app.claim_with(&near_end(&app, "late", 1_000)).await;
    assert_eq!(
        c.map(|c| c.sweep_id),
        Some(fresh),
        "no estimate, no refusal"
    );

    // Minutes read as minutes.
    assert_eq!(
        protocol::views::passed_over(2_520_000, 540_000),
        "needs about 42 min per epoch; the worker had 9 min left"
    );
}

#[tokio::test]
async fn pending_work_is_counted_by_what_it_needs_of_a_worker() {
    let app = spawn_app().await;
    app.submit(&sweep_of("cpu", "[1, 2, 3]")).await;
    app.submit(
        "name = \"gpus\"\n[train]\ndataset = \"synthetic\"\nepochs = 1\ndevice = \"cuda\"\nnproc_per_node = 2\nnnodes = 2\n[grid]\nseed = [1]\n",
    )
    .await;
    let (status, shapes) = app.get(protocol::routes::PENDING_SHAPES).await;
    assert_eq!(status, StatusCode::OK, "{shapes}");
    assert_eq!(
        shapes,
        json!([
            {"nnodes": 2, "nproc_per_node": 2, "command": false, "gpus_per_node": 2, "jobs": 1, "epoch_seconds": null},
            {"nnodes": 1, "nproc_per_node": 1, "command": false, "gpus_per_node": null, "jobs": 3, "epoch_seconds": null},
        ])
    );
    // One epoch of a claimed cpu job: its sweep's estimate is the shape's expectation.
    let c = app.claim("w").await.unwrap();
    app.clock.advance_ms(12_000);
    app.metrics(c.id, c.attempt, 1, Some(1.0), 0.5).await;
    let (_, shapes) = app.get(protocol::routes::PENDING_SHAPES).await;
    assert_eq!(shapes[1]["jobs"], 2, "{shapes}");
    assert_eq!(shapes[1]["epoch_seconds"], 12.0, "{shapes}");
    // A worker's token reads it too (the autoscaler may run with one).
    let r = reqwest::Client::new()
        .get(format!("{}{}", app.base, protocol::routes::PENDING_SHAPES))
        .bearer_auth(WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A worker near its end joins a forming gang only if the gang's job is expected to fit: a member
/// that must leave mid-epoch would end the attempt for every member.
#[tokio::test]
async fn a_worker_near_its_end_joins_no_gang_whose_epoch_does_not_fit() {
    let app = spawn_app().await;
    app.submit(
        "name = \"gang\"\n[train]\ndataset = \"synthetic\"\nepochs = 2\nnnodes = 2\nnproc_per_node = 2\n[grid]\nseed = [1, 2]\n",
    )
    .await;
    let asks = crate::gangs::asks;
    let a = app.claim_with(&asks("gpu-a")).await.unwrap();
    app.claim_with(&asks("gpu-b")).await.unwrap();
    app.clock.advance_ms(60_000);
    let report = serde_json::to_value(TestApp::report(a.attempt, 1, Some(1.0), 0.5)).unwrap();
    let (status, body) =
        crate::gangs::write_as(&app, &a, &protocol::routes::metrics(a.id), report).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The second job's gang starts forming; its sweep's epochs take a minute.
    let c = app.claim_with(&asks("gpu-c")).await.unwrap();
    assert_ne!(c.id, a.id);
    let mut late = asks("gpu-d");
    late.deadline = Some(app.clock.now_ms() + 30_000);
    assert!(app.claim_with(&late).await.is_none(), "30 s left: no join");
    let joined = app.claim_with(&asks("gpu-e")).await.unwrap();
    assert_eq!((joined.id, joined.gang.unwrap().node_rank), (c.id, 1));
}
