//! Random search through the API: a sweep file with `[search] method = "random"` becomes `trials`
//! jobs drawn from `[search.space]`, the same for the same seed; bad searches are 422s naming the
//! field.
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const RANDOM: &str = r#"
name = "lr-bs-search"
[train]
dataset = "synthetic"
epochs = 3
[search]
method = "random"
trials = 40
seed = 0
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
batch_size = { choice = [16, 32, 64, 128] }
momentum = { uniform = [0.8, 0.99] }
warmup_epochs = { int = [0, 5] }
"#;

async fn params_of(app: &TestApp, sweep: &Value) -> Vec<Value> {
    let (_, s) = app.get(&format!("/api/sweeps/{}", sweep["id"])).await;
    s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["params"].clone())
        .collect()
}

#[tokio::test]
async fn a_random_search_becomes_its_trials_the_same_for_the_same_seed() {
    let app = spawn_app().await;
    let (s, a) = app.submit_toml(RANDOM).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(a["jobs"], 40);
    let first = params_of(&app, &a).await;
    for p in &first {
        let lr = p["lr"].as_f64().unwrap();
        assert!((1e-4..=1e-1).contains(&lr), "{p}");
        assert!(
            [16, 32, 64, 128].contains(&p["batch_size"].as_i64().unwrap()),
            "{p}"
        );
        assert!(
            (0.8..0.99).contains(&p["momentum"].as_f64().unwrap()),
            "{p}"
        );
        assert!(
            (0..=5).contains(&p["warmup_epochs"].as_i64().unwrap()),
            "{p}"
        );
        assert_eq!(p["epochs"], 3, "[train] is shared");
    }
    let (_, b) = app.submit_toml(RANDOM).await;
    assert_eq!(params_of(&app, &b).await, first, "same seed, same trials");
    let (_, c) = app
        .submit_toml(&RANDOM.replace("seed = 0", "seed = 1"))
        .await;
    assert_ne!(params_of(&app, &c).await, first);
    // The stored spec keeps the search; the export shows the drawn options (a search's own
    // table: its job ids and axes, no study columns).
    let (_, sw) = app.get(&format!("/api/sweeps/{}", a["id"])).await;
    assert_eq!(sw["spec"]["search"]["trials"], 40);
    let md = app
        .get_text(&format!("/api/sweeps/{}/results", a["id"]))
        .await;
    assert!(
        md.starts_with("| job | lr | batch_size | momentum | warmup_epochs | status |"),
        "{md}"
    );
    // Trials are ordinary jobs: a worker claims them.
    assert!(app.claim("w").await.is_some());
}

#[tokio::test]
async fn bad_searches_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let base = |search: Value| json!({"name": "s", "search": search});
    let space = json!({"lr": {"log_uniform": [1e-4, 1e-1]}});
    for (body, field) in [
        (
            base(json!({"method": "bayes", "trials": 3, "space": space})),
            "search.method",
        ),
        (
            base(json!({"method": "random", "space": space})),
            "search.trials",
        ),
        (
            base(json!({"method": "random", "trials": 0, "space": space})),
            "search.trials",
        ),
        (
            base(json!({"method": "random", "trials": 200000, "space": space})),
            "search.trials",
        ),
        (
            base(json!({"method": "random", "trials": 3})),
            "search.space",
        ),
        (
            base(
                json!({"method": "random", "trials": 3, "space": {"lr": {"log_uniform": [0.0, 1.0]}}}),
            ),
            "search.space.lr.log_uniform",
        ),
        (
            base(
                json!({"method": "random", "trials": 3, "space": {"lr": {"uniform": [0.1, 0.01]}}}),
            ),
            "search.space.lr.uniform",
        ),
        (
            base(
                json!({"method": "random", "trials": 3, "space": {"lr": {"gaussian": [0.1, 0.01]}}}),
            ),
            "search.space.lr",
        ),
        (
            base(
                json!({"method": "random", "trials": 3, "space": {"batch_size": {"uniform": [1.0, 64.0]}}}),
            ),
            "search.space.batch_size.uniform[0]",
        ),
        (
            base(
                json!({"method": "random", "trials": 3, "space": {"batch_size": {"int": [0, 64]}}}),
            ),
            "search.space.batch_size.int[0]",
        ),
        (
            base(json!({"method": "random", "trials": 3, "space": {"batch_size": {"choice": []}}})),
            "search.space.batch_size.choice",
        ),
        (
            base(json!({"method": "random", "trials": 3, "space": {"nonsense": {"int": [1, 2]}}})),
            "search.space.nonsense.int[0]",
        ),
        (
            base(json!({"method": "random", "trials": 3, "seed": -1, "space": space})),
            "search.seed",
        ),
        (
            base(json!({"method": "grid", "trials": 3})),
            "search.trials",
        ),
        (
            json!({"name": "s", "train": {"lr": 0.1}, "search": {"method": "random", "trials": 3, "space": space}}),
            "search.space.lr",
        ),
        (
            json!({"name": "s", "grid": {"seed": [1, 2]}, "search": {"method": "random", "trials": 3, "space": space}}),
            "grid",
        ),
        (
            json!({"name": "s", "early_stop": {"method": "successive_halving"}}),
            "early_stop.method",
        ),
    ] {
        let (s, e) = app.post("/api/sweeps", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert!(
            e["error"].as_str().unwrap().starts_with(field),
            "{body}: {e}"
        );
    }
    // method = "grid" with a [grid] is the grid, as without [search].
    let (s, c) = app
        .post(
            "/api/sweeps",
            json!({"name": "g", "search": {"method": "grid"}, "grid": {"seed": [1, 2]}}),
        )
        .await;
    assert_eq!((s, c["jobs"].as_i64()), (StatusCode::CREATED, Some(2)));
}
