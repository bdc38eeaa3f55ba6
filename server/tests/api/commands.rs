//! Command jobs and logs through the real server: specs checked at submit, claims that hand a
//! command job only to a worker that runs them, metrics of a program's own, and every job's log
//! (fenced, idempotent, trimmed, read by offset).
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const COMMAND: &str = r#"
name = "cmd"
[command]
argv = ["python3", "train.py", "--lr", "{lr}", "--epochs", "{epochs}"]
workdir = "examples/pytorch"
ranks = 2
[train]
epochs = 3
[grid]
lr = [0.01, 0.0001]
"#;

#[tokio::test]
async fn bad_command_specs_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let base = "name = \"x\"\n[train]\nlr = 0.1\n[command]\n";
    for (command, field) in [
        ("argv = [\"x\"]\nworkdir = \"/srv\"\n", "command.workdir"),
        (
            "argv = [\"x\"]\nworkdir = \"a/../../b\"\n",
            "command.workdir",
        ),
        ("argv = [\"x\", \"--epochs={epochs}\"]\n", "command.argv[1]"),
        ("argv = []\n", "command.argv"),
        ("argv = [\"x\"]\nranks = 0\n", "command.ranks"),
    ] {
        let (status, body) = app.submit_toml(&format!("{base}{command}")).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{command}: {body}"
        );
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(field), "{command}: {msg}");
    }
    let (_, body) = app
        .submit_toml(&format!("{base}argv = [\"x\", \"{{epochs}}\"]\n"))
        .await;
    assert!(
        body["error"].as_str().unwrap().contains("{epochs}"),
        "names the placeholder: {body}"
    );
    let (_, sweeps) = app.get("/api/sweeps").await;
    assert_eq!(sweeps, json!([]), "nothing stored");
}

#[tokio::test]
async fn only_a_worker_that_runs_commands_is_handed_a_command_job() {
    let app = spawn_app().await;
    app.submit(COMMAND).await;
    app.submit(TWO_JOBS).await;
    // A plain worker gets the trainer's jobs, never the (older) command jobs.
    for _ in 0..2 {
        let c = app.claim("plain").await.unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.sweep_id, 2);
    }
    assert!(app.claim("plain").await.is_none());
    let claim = |capacity: Value| {
        let app = &app;
        async move {
            app.post(
                "/api/jobs/claim",
                json!({"worker": "cmd", "capacity": capacity, "accepts_commands": true}),
            )
            .await
        }
    };
    // ranks = 2: not on one free rank, and never on a shared (packing) slot.
    assert_eq!(claim(json!({"ranks": 1})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        claim(json!({"ranks": 2, "max_batch_size": 64})).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, c) = claim(json!({"ranks": 2})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        c["command"]["argv"][3], "{lr}",
        "the template: the worker renders it"
    );
    assert_eq!(c["command"]["workdir"], "examples/pytorch");
    assert_eq!(c["params"], json!({"epochs": 3, "lr": 0.01}));
}

#[tokio::test]
async fn metrics_of_a_programs_own_are_kept_checked_and_judged() {
    let app = spawn_app().await;
    app.submit(
        r#"name = "own"
[command]
argv = ["run", "{q}"]
[grid]
q = [1, 2]
[early_stop]
method = "asha"
metric = "val/bleu"
mode = "max"
min_epochs = 1
reduction_factor = 2
"#,
    )
    .await;
    let accepts = json!({"worker": "w", "accepts_commands": true});
    let a: protocol::Claim =
        serde_json::from_value(app.post("/api/jobs/claim", accepts.clone()).await.1).unwrap();
    let b: protocol::Claim =
        serde_json::from_value(app.post("/api/jobs/claim", accepts).await.1).unwrap();
    let report = |job: i64, body: Value| {
        let app = &app;
        async move { app.post(&format!("/api/jobs/{job}/metrics"), body).await }
    };
    let (s, r) = report(
        a.id,
        json!({"attempt": 1, "epoch": 1, "extra": {"val/bleu": 30.0, "tokens": 1e6}}),
    )
    .await;
    assert_eq!((s, r["stop"].as_bool()), (StatusCode::OK, Some(false)));
    // Judged on the program's own metric: the worse of two at the rung stops.
    let (s, r) = report(
        b.id,
        json!({"attempt": 1, "epoch": 1, "extra": {"val/bleu": 20.0}}),
    )
    .await;
    assert_eq!(
        (s, r["stop"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    let detail = app.job(a.id).await;
    assert_eq!(
        detail["metrics"][0]["extra"],
        json!({"val/bleu": 30.0, "tokens": 1e6})
    );
    // In the exports, as columns of their own (a parameter's name taken: `_last` added).
    let csv = app
        .get_text(&format!("/api/sweeps/{}/results?format=csv", a.sweep_id))
        .await;
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(
        header.contains(&"val/bleu") && header.contains(&"tokens"),
        "{csv}"
    );
    let (_, rows) = app
        .get(&format!("/api/sweeps/{}/results?format=json", a.sweep_id))
        .await;
    assert_eq!(rows[0]["val/bleu"], 30.0, "{rows}");
    assert_eq!(rows[1]["val/bleu"], 20.0, "{rows}");
    // And in the curves (per epoch, by name).
    let (_, curves) = app.get(&format!("/api/sweeps/{}/curves", a.sweep_id)).await;
    assert_eq!(curves[0]["extra"]["tokens"], json!([1e6]), "{curves}");
    for bad in [
        json!({"attempt": 1, "epoch": 2, "extra": {"bad name": 1.0}}),
        json!({"attempt": 1, "epoch": 2, "extra": {"accuracy": 0.5}}),
        json!({"attempt": 1, "epoch": 2, "extra": {"x": 1e301}}),
        json!({"attempt": 1, "epoch": 2, "extra": (0..65).map(|i| (format!("m{i}"), json!(1.0))).collect::<serde_json::Map<_, _>>()}),
    ] {
        let (s, r) = report(a.id, bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {r}");
    }
}

async fn append(
    app: &TestApp,
    job: i64,
    attempt: i64,
    offset: i64,
    data: &str,
    token: &str,
) -> StatusCode {
    let query = format!("attempt={attempt}&offset={offset}");
    append_at(app, job, &query, data, token).await.status()
}

async fn append_at(
    app: &TestApp,
    job: i64,
    query: &str,
    data: &str,
    token: &str,
) -> reqwest::Response {
    let path = format!("/api/jobs/{job}/log?{query}");
    app.holding(app.http.post(format!("{}{path}", app.base)), &path)
        .bearer_auth(token)
        .body(data.to_string())
        .send()
        .await
        .unwrap()
}

/// An append that would leave a gap is refused and stores nothing (at offset 10^12 it used to be
/// stored, and every later append then read as a retry and was dropped); a gap the worker
/// declares (output it dropped) is accepted; the reply says how many bytes were new.
#[tokio::test]
async fn a_log_append_past_the_end_is_refused_unless_its_gap_is_declared() {
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let c = app.claim("w").await.unwrap();
    let post = |query: &'static str, data: &'static str| {
        let app = &app;
        async move {
            let r = append_at(app, c.id, query, data, WORKER_TOKEN).await;
            let header = |n: &str| {
                r.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap().parse::<i64>().unwrap())
            };
            let stored = (header("x-log-stored"), header("x-log-next"));
            (r.status(), stored, r.text().await.unwrap())
        }
    };
    let (s, stored, _) = post("attempt=1&offset=0", "hello\n").await;
    assert_eq!((s, stored), (StatusCode::NO_CONTENT, (Some(6), Some(6))));
    let (s, _, why) = post("attempt=1&offset=1000000000000", "evil").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("gap"), "{why}");
    let (s, stored, _) = post("attempt=1&offset=6", "world\n").await;
    assert_eq!((s, stored), (StatusCode::NO_CONTENT, (Some(6), Some(12))));
    assert_eq!(read(&app, c.id, "").await, ("hello\nworld\n".into(), 0, 12));
    // 8 bytes the worker dropped: declared, so the jump is taken.
    let (s, stored, _) = post("attempt=1&offset=20&gap=8", "after\n").await;
    assert_eq!((s, stored), (StatusCode::NO_CONTENT, (Some(6), Some(26))));
    // A retry of stored bytes: accepted, and says nothing new was stored.
    let (s, stored, _) = post("attempt=1&offset=20", "after\n").await;
    assert_eq!((s, stored), (StatusCode::NO_CONTENT, (Some(0), Some(26))));
    // A gap wider than declared, or a declaration past the offset: refused, nothing stored.
    for query in [
        "attempt=1&offset=40&gap=5",
        "attempt=1&offset=26&gap=27",
        "attempt=1&offset=26&gap=-1",
    ] {
        let (s, _, why) = post(query, "x").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {why}");
    }
    assert_eq!(read(&app, c.id, "").await.2, 26);
}

/// The text from `offset`, and the offsets in its headers: (text, first byte's offset, next).
async fn read(app: &TestApp, job: i64, query: &str) -> (String, i64, i64) {
    let r = app
        .http
        .get(format!("{}/api/jobs/{job}/log?{query}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let header = |n: &str| r.headers()[n].to_str().unwrap().parse::<i64>().unwrap();
    let (offset, next) = (header("x-log-offset"), header("x-log-next"));
    (r.text().await.unwrap(), offset, next)
}

#[tokio::test]
async fn a_log_is_fenced_stored_once_and_read_on_from_any_offset() {
    let app = spawn_with(|cfg| cfg.max_log_bytes = 1000).await;
    app.submit(TWO_JOBS).await;
    let c = app.claim("w").await.unwrap();
    assert_eq!(
        append(&app, c.id, 1, 0, "hello\n", WORKER_TOKEN).await,
        StatusCode::NO_CONTENT
    );
    // A retry of the same bytes, and one overlapping what is stored: each byte kept once.
    assert_eq!(
        append(&app, c.id, 1, 0, "hello\n", WORKER_TOKEN).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        append(&app, c.id, 1, 3, "lo\nworld\n", WORKER_TOKEN).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(read(&app, c.id, "").await, ("hello\nworld\n".into(), 0, 12));
    assert_eq!(read(&app, c.id, "offset=8").await, ("rld\n".into(), 8, 12));
    assert_eq!(read(&app, c.id, "offset=12").await, ("".into(), 12, 12));
    // Fenced: an attempt that does not hold the job, an anonymous client, a missing offset.
    assert_eq!(
        append(&app, c.id, 2, 12, "x", WORKER_TOKEN).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        append(&app, c.id, 1, 12, "x", "wrong").await,
        StatusCode::UNAUTHORIZED
    );
    let path = format!("/api/jobs/{}/log?attempt=1", c.id);
    let r = app
        .holding(app.http.post(format!("{}{path}", app.base)), &path)
        .bearer_auth(WORKER_TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The next attempt has its own log; the old one is kept and read by number.
    app.expire_leases().await;
    let c2 = app.claim("w").await.unwrap();
    assert_eq!((c2.id, c2.attempt), (c.id, 2));
    assert_eq!(
        append(&app, c.id, 1, 12, "late\n", WORKER_TOKEN).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        append(&app, c.id, 2, 0, "second\n", WORKER_TOKEN).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(read(&app, c.id, "").await.0, "second\n");
    assert_eq!(read(&app, c.id, "attempt=1").await.0, "hello\nworld\n");
    // Past --max-log-mib (1000 bytes here) the oldest output goes first, never the newest.
    let line = "y".repeat(199) + "\n";
    for i in 0..10 {
        assert_eq!(
            append(&app, c.id, 2, 7 + 200 * i, &line, WORKER_TOKEN).await,
            StatusCode::NO_CONTENT
        );
    }
    let (text, offset, next) = read(&app, c.id, "").await;
    assert_eq!(next, 7 + 2000);
    assert!(
        offset > 0 && text.len() <= 1000 && text.ends_with(&line),
        "{offset} {}",
        text.len()
    );
    assert_eq!(
        text.len() as i64,
        next - offset,
        "what is kept is contiguous"
    );
    assert_eq!(
        read(&app, c.id, "attempt=1").await.0,
        "",
        "the older attempt went first"
    );
    // Too big a chunk is refused before it is stored.
    let big = "z".repeat((256 << 10) + 1);
    assert_eq!(
        append(&app, c.id, 2, next, &big, WORKER_TOKEN).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

/// A log made of many small chunks (the usual case: a line or two per poll) is read from any
/// offset, far past the first chunks, and paged through whole.
#[tokio::test]
async fn a_log_of_many_small_chunks_reads_from_any_offset() {
    let app = spawn_app().await;
    app.submit(TWO_JOBS).await;
    let c = app.claim("w").await.unwrap();
    let line = |i: usize| format!("line {i:05} {}\n", "x".repeat(50));
    let mut all = String::new();
    for i in 0..6000 {
        let l = line(i);
        let status = append(&app, c.id, 1, all.len() as i64, &l, WORKER_TOKEN).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        all.push_str(&l);
    }
    assert!(
        all.len() > 300_000,
        "more than one chunk's reach: {}",
        all.len()
    );
    let far = all.len() - 1000;
    let (text, offset, next) = read(&app, c.id, &format!("offset={far}")).await;
    assert_eq!((offset, next), (far as i64, all.len() as i64));
    assert_eq!(text, all[far..]);
    // Paged from the start, the reads put the whole log back together.
    let (mut got, mut at) = (String::new(), 0);
    loop {
        let (text, _, next) = read(&app, c.id, &format!("offset={at}")).await;
        if next == at {
            break;
        }
        got.push_str(&text);
        at = next;
    }
    assert_eq!(got, all);
}
