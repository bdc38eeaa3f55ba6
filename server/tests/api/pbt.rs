//! Population-based training through the worker protocol: a bottom member's report exploits a top
//! member's pinned checkpoint (its attempt ends, its params and epoch move, the epochs it goes back
//! over are kept in its segment, the donor's checkpoint is copied into its slot); a copy that could
//! not be made is made before anyone reads the slot, after a restart too; bad PBT sweeps are 422s
//! naming the field, with nothing stored.
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Two members, decisions every 2 epochs, the bottom half copies the top half.
const PBT: &str = r#"
name = "pbt"
[train]
dataset = "synthetic"
epochs = 6
[search]
method = "pbt"
population = 2
interval = 2
quantile = 0.5
metric = "accuracy"
mode = "max"
seed = 3
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
momentum = { uniform = [0.8, 0.99] }
"#;

pub(crate) async fn upload(
    app: &TestApp,
    job: i64,
    attempt: i64,
    epoch: i64,
    bytes: &[u8],
) -> StatusCode {
    let path = format!("/api/jobs/{job}/checkpoint?attempt={attempt}&epoch={epoch}");
    app.holding(app.http.put(format!("{}{path}", app.base)), &path)
        .bearer_auth(WORKER_TOKEN)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// The smallest exploit: two members deciding every epoch; A is the top at 2 and its checkpoint
/// of 2 arrives; B's report of 2 puts it in the bottom, and it copies A. (sweep, A, B).
pub(crate) async fn two_members_b_copies_a(app: &TestApp) -> (i64, i64, i64) {
    let created = app
        .submit(
            r#"
name = "pbt"
[train]
dataset = "synthetic"
epochs = 4
[search]
method = "pbt"
population = 2
interval = 1
quantile = 0.5
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
"#,
        )
        .await;
    let (a, b) = (
        app.claim("a").await.unwrap().id,
        app.claim("b").await.unwrap().id,
    );
    assert_eq!(app.metrics(a, 1, 1, Some(1.0), 0.9).await, StatusCode::OK);
    assert_eq!(app.metrics(b, 1, 1, Some(1.0), 0.5).await, StatusCode::OK);
    assert_eq!(app.metrics(a, 1, 2, Some(1.0), 0.95).await, StatusCode::OK);
    assert_eq!(upload(app, a, 1, 2, b"a2").await, StatusCode::OK);
    assert_eq!(app.metrics(b, 1, 2, Some(1.0), 0.4).await, StatusCode::OK);
    (created.id, a, b)
}

/// The job's stored checkpoint, as the admin reads it.
async fn slot(app: &TestApp, job: i64) -> Vec<u8> {
    let r = app
        .http
        .request(
            Method::GET,
            format!("{}/api/jobs/{job}/checkpoint", app.base),
        )
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap().to_vec()
}

async fn report(
    app: &TestApp,
    job: i64,
    attempt: i64,
    epochs: std::ops::RangeInclusive<i64>,
    acc: f64,
) {
    for epoch in epochs {
        assert_eq!(
            app.metrics(job, attempt, epoch, Some(1.0), acc).await,
            StatusCode::OK
        );
    }
}

/// B (bottom) and A (top, pinned at epoch 2), then B's report of epoch 4: B exploits A's epoch 2.
/// Returns (A, B) after B's exploiting report.
async fn exploit_scene(
    app: &TestApp,
    before_b_reports: impl std::future::Future<Output = ()>,
) -> (i64, i64) {
    let created = app.submit(PBT).await;
    assert_eq!(created.jobs, 2);
    let (a, b) = (
        app.claim("wa").await.unwrap(),
        app.claim("wb").await.unwrap(),
    );
    let (a, b) = (a.id, b.id);
    // B is scored alone at 2: nothing to rank against.
    report(app, b, 1, 1..=2, 0.5).await;
    assert_eq!(upload(app, b, 1, 2, b"b-epoch-2").await, StatusCode::OK);
    // A at 2 is the top: its checkpoint of 2 is pinned when it arrives.
    report(app, a, 1, 1..=2, 0.9).await;
    assert_eq!(upload(app, a, 1, 2, b"a-epoch-2").await, StatusCode::OK);
    let pin = app.state.artifacts.join(format!("job-{a}/pinned-2"));
    assert_eq!(std::fs::read(&pin).unwrap(), b"a-epoch-2");
    // A's next upload replaces its slot, not its pin.
    assert_eq!(upload(app, a, 1, 3, b"a-epoch-3").await, StatusCode::OK);
    assert_eq!(upload(app, b, 1, 3, b"b-epoch-3").await, StatusCode::OK);
    before_b_reports.await;
    // B at 4 is the bottom: it copies A as pinned at 2 and goes back to epoch 2.
    report(app, b, 1, 3..=4, 0.4).await;
    (a, b)
}

#[tokio::test]
async fn a_bottom_member_takes_the_top_ones_pinned_checkpoint_params_and_epoch() {
    let app = spawn_app().await;
    let (a, b) = exploit_scene(&app, async {}).await;
    // The attempt ended from the coordinator's side: the old worker's writes are refused.
    let (status, _) = app.heartbeat(b, 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        upload(&app, b, 1, 4, b"b-epoch-4").await,
        StatusCode::CONFLICT
    );
    let detail = app.job_detail(b).await;
    assert_eq!(detail.job.status, JobStatus::Pending);
    assert_eq!(detail.job.epoch, 2, "the donor's point");
    let epochs: Vec<i64> = detail.metrics.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, [1, 2]);
    let [segment] = &detail.segments[..] else {
        panic!("{:?}", detail.segments)
    };
    assert_eq!(
        (segment.donor, segment.from_epoch, segment.at_epoch),
        (a, 2, 4)
    );
    let replaced: Vec<(i64, f64)> = segment
        .replaced
        .iter()
        .map(|m| (m.epoch, m.accuracy.unwrap()))
        .collect();
    assert_eq!(
        replaced,
        [(3, 0.4), (4, 0.4)],
        "B's own epochs past 2, kept"
    );
    // The params are A's explored (each scaled by 1.2 or 0.8, or drawn again), inside the space.
    let params = &detail.job.params;
    assert_eq!(Value::Object(segment.params.clone()), *params);
    let lr = params["lr"].as_f64().unwrap();
    let momentum = params["momentum"].as_f64().unwrap();
    assert!(
        (1e-4..=1e-1).contains(&lr) && (0.8..=0.99).contains(&momentum),
        "{params}"
    );
    assert_eq!(params["epochs"], 6);
    assert_eq!(
        slot(&app, b).await,
        b"a-epoch-2",
        "the donor's pinned checkpoint"
    );
    // Nothing of an attempt was spent; the next claim runs B with the new params.
    let again = app.claim("wc").await.unwrap();
    assert_eq!((again.id, again.attempt), (b, 2));
    assert_eq!(again.params, *params);
    let attempts = app.job_detail(b).await.attempts;
    assert_eq!(attempts[0].outcome.as_deref(), Some("released"));
    // B's new segment reports epoch 3 again: recorded, the replaced one still in its segment.
    report(&app, b, 2, 3..=3, 0.7).await;
    let detail = app.job_detail(b).await;
    assert_eq!(detail.metrics.last().unwrap().accuracy, Some(0.7));
    assert_eq!(detail.segments[0].replaced.len(), 2);
    // A moves on: at its next point its old pin can no longer be copied and goes; the new one
    // stays once its checkpoint arrives.
    report(&app, a, 1, 3..=4, 0.95).await;
    assert_eq!(upload(&app, a, 1, 4, b"a-epoch-4").await, StatusCode::OK);
    let dir = app.state.artifacts.join(format!("job-{a}"));
    assert!(!dir.join("pinned-2").exists());
    assert_eq!(std::fs::read(dir.join("pinned-4")).unwrap(), b"a-epoch-4");
}

#[tokio::test]
async fn a_copy_that_could_not_be_made_is_made_before_the_slot_is_read_after_a_restart_too() {
    let mut app = spawn_app().await;
    let artifacts = app.state.artifacts.to_path_buf();
    let hidden = artifacts.join("hidden-pin");
    let away = hidden.clone();
    let arts = artifacts.clone();
    // The donor's pin is out of reach when the exploit commits (as if the coordinator died
    // between the commit and the copy): the copy cannot be made.
    let (a, b) = exploit_scene(&app, async move {
        let a_dir = std::fs::read_dir(&arts)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("pinned-2").exists())
            .unwrap();
        std::fs::rename(a_dir.join("pinned-2"), &away).unwrap();
    })
    .await;
    assert_eq!(app.job_detail(b).await.job.status, JobStatus::Pending);
    // The slot is still B's own last checkpoint, whole; a half-written copy would be aside.
    let b_dir = artifacts.join(format!("job-{b}"));
    assert_eq!(
        std::fs::read(b_dir.join("resume.safetensors")).unwrap(),
        b"b-epoch-3"
    );
    std::fs::write(b_dir.join(".resume.safetensors.copy.0.partial"), b"a-ep").unwrap();
    // The pin is back; a restarted coordinator makes the copy before any worker can read it.
    std::fs::rename(&hidden, artifacts.join(format!("job-{a}/pinned-2"))).unwrap();
    app.restart().await;
    assert_eq!(
        std::fs::read(b_dir.join("resume.safetensors")).unwrap(),
        b"a-epoch-2"
    );
    let claim = app.claim("w").await.unwrap();
    assert_eq!((claim.id, claim.attempt), (b, 2));
    let path = format!("/api/jobs/{b}/checkpoint");
    let got = app
        .holding(app.http.get(format!("{}{path}", app.base)), &path)
        .bearer_auth(WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"a-epoch-2");
}

#[tokio::test]
async fn a_pbt_sweep_is_its_population_and_bad_ones_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let (s, created) = app.submit_toml(PBT).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let (_, sweep) = app.get(&format!("/api/sweeps/{}", created["id"])).await;
    let search = &sweep["spec"]["search"];
    assert_eq!(
        (
            search["method"].clone(),
            search["population"].clone(),
            search.get("trials")
        ),
        (json!("pbt"), json!(2), None)
    );
    assert_eq!(
        (search["quantile"].clone(), search["perturb"].clone()),
        (json!(0.5), json!([1.2, 0.8]))
    );
    let (_, list) = app.get("/api/sweeps").await;
    let stored = list["total"].clone();
    let space = json!({"lr": {"log_uniform": [1e-4, 1e-1]}});
    let pbt = |extra: Value| {
        let mut s = json!({"method": "pbt", "population": 4, "interval": 2, "space": space});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"name": "p", "train": {"dataset": "synthetic"}, "search": s})
    };
    let with = |mut body: Value, key: &str, v: Value| {
        body[key] = v;
        body
    };
    for (body, field) in [
        (pbt(json!({"population": 1})), "search.population"),
        (pbt(json!({"population": 10001})), "search.population"),
        (pbt(json!({"trials": 8})), "search.trials"),
        (pbt(json!({"interval": 0})), "search.interval"),
        (pbt(json!({"quantile": 0.6})), "search.quantile"),
        (pbt(json!({"quantile": -0.1})), "search.quantile"),
        (pbt(json!({"perturb": [1.2, 0.0]})), "search.perturb[1]"),
        (pbt(json!({"perturb": [-1.0]})), "search.perturb[0]"),
        (pbt(json!({"perturb": []})), "search.perturb"),
        (
            pbt(json!({"resample_probability": 1.5})),
            "search.resample_probability",
        ),
        (
            pbt(json!({"space": {"model_widths": {"choice": [[8, 16, 32, 64]]}}})),
            "search.space.model_widths",
        ),
        (
            pbt(json!({"space": {"epochs": {"int": [2, 4]}}})),
            "search.space.epochs",
        ),
        (
            pbt(json!({"space": {"batch_size": {"choice": [16, 32]}}})),
            "search.space.batch_size",
        ),
        (
            pbt(json!({"objectives": [{"metric": "accuracy"}]})),
            "search.objectives",
        ),
        (pbt(json!({"enqueue": [{"lr": 0.01}]})), "search.enqueue"),
        (
            with(
                pbt(json!({})),
                "early_stop",
                json!({"method": "asha", "metric": "accuracy"}),
            ),
            "early_stop",
        ),
        (
            with(pbt(json!({})), "run", json!({"repeats": 2})),
            "run.repeats",
        ),
        (
            with(pbt(json!({})), "run", json!({"external": true})),
            "run.external",
        ),
        (
            json!({"name": "p", "search": {"method": "random", "trials": 2, "interval": 2, "space": space}}),
            "search.interval",
        ),
        (
            json!({"name": "p", "command": {"argv": ["python3", "x.py"]},
                   "search": {"method": "pbt", "population": 2, "interval": 1, "metric": "q",
                              "space": {"epochs": {"int": [1, 3]}}}}),
            "search.space.epochs",
        ),
    ] {
        let (s, e) = app.post("/api/sweeps", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert!(
            e["error"].as_str().unwrap().starts_with(field),
            "{body}: {e}"
        );
    }
    let (_, list) = app.get("/api/sweeps").await;
    assert_eq!(list["total"], stored, "nothing stored");
}

#[tokio::test]
async fn the_best_members_schedule_follows_its_donor_and_replays_as_one_run() {
    let app = spawn_app().await;
    let (a, b) = exploit_scene(&app, async {}).await;
    let a_initial = app.job_detail(a).await.job.params.clone();
    // B, claimed again, trains 3 to 6 with its new params and ends best; A ends worse.
    let again = app.claim("w").await.unwrap();
    assert_eq!(again.id, b);
    report(&app, b, 2, 3..=6, 0.97).await;
    assert_eq!(app.finish(b, 2, Outcome::Completed).await.0, StatusCode::OK);
    report(&app, a, 1, 3..=6, 0.9).await;
    assert_eq!(app.finish(a, 1, Outcome::Completed).await.0, StatusCode::OK);
    let sweep_id = app.job_detail(b).await.job.sweep_id;
    let (s, v) = app.get(&format!("/api/sweeps/{sweep_id}/schedule")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["job_id"].as_i64(), v["value"].as_f64()),
        (Some(b), Some(0.97))
    );
    let b_params = app.job_detail(b).await.job.params.clone();
    let pick = |p: &Value| json!({"lr": p["lr"], "momentum": p["momentum"]});
    assert_eq!(
        v["steps"],
        json!([
            {"first_epoch": 1, "last_epoch": 2, "job_id": a, "params": pick(&a_initial)},
            {"first_epoch": 3, "last_epoch": 6, "job_id": b, "params": pick(&b_params)},
        ])
    );
    // The replay: A's initial values, B's from epoch 3, as one plain run.
    let replay = v["replay"].as_str().unwrap();
    let (s, created) = app.submit_toml(replay).await;
    assert_eq!(s, StatusCode::CREATED, "{replay}: {created}");
    let (_, sweep) = app.get(&format!("/api/sweeps/{}", created["id"])).await;
    let params = &sweep["jobs"][0]["params"];
    assert_eq!(pick(params), pick(&a_initial), "{replay}");
    assert_eq!(
        params["schedule"],
        json!([{"epoch": 3, "lr": b_params["lr"], "momentum": b_params["momentum"]}]),
        "{replay}"
    );
    assert_eq!(
        (params["epochs"].clone(), params["dataset"].clone()),
        (json!(6), json!("synthetic"))
    );
    // The exports show each member's own schedule beside its (last segment's) values.
    let md = app
        .get_text(&format!("/api/sweeps/{sweep_id}/results"))
        .await;
    let b_row = md
        .lines()
        .find(|l| l.starts_with(&format!("| {b} |")))
        .unwrap();
    assert!(
        md.lines().next().unwrap().contains("| status | schedule |"),
        "{md}"
    );
    assert!(
        b_row.contains(&format!("3 (#{a}'s checkpoint of 2): lr=")),
        "{md}"
    );
    let csv = app
        .get_text(&format!("/api/sweeps/{sweep_id}/results?format=csv"))
        .await;
    assert!(
        csv.lines().next().unwrap().contains("status,schedule"),
        "{csv}"
    );
    // Not a PBT sweep: 404 saying so.
    let (s, e) = app
        .get(&format!("/api/sweeps/{}/schedule", created["id"]))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
}
