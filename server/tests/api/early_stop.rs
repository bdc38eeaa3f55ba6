//! Early stopping through the worker protocol: the coordinator's decisions equal Optuna's pruners'
//! (run from `.venv` on the same reports in the same order), and a stopped job ends `pruned` on
//! every path (finish, release, lease expiry) and is never handed out again.
use crate::helpers::*;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One case: a rule, hand-made curves and the order their epochs arrive in.
#[derive(Debug)]
struct Scenario {
    /// The sweep's name, and Optuna's study's (Hyperband's brackets hash it).
    name: String,
    rule: Value,
    mode: &'static str,
    jobs: usize,
    epochs: i64,
    /// (job, epoch, value) in arrival order; a job's epochs in order.
    events: Vec<(usize, i64, f64)>,
}

/// Curves drawn from a seed with values on a coarse grid (ties are frequent, as at real rungs),
/// interleaved in a random order.
fn scenario(seed: u64, rule: Value, jobs: usize, epochs: i64) -> Scenario {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mode = if rule["metric"] == "test_loss" {
        "min"
    } else {
        "max"
    };
    let curves: Vec<Vec<f64>> = (0..jobs)
        .map(|_| {
            (0..epochs)
                .map(|_| f64::from(rng.gen_range(0..=8)) / 8.0)
                .collect()
        })
        .collect();
    let mut next = vec![1i64; jobs];
    let mut events = vec![];
    while let Some(open) = {
        let open: Vec<usize> = (0..jobs).filter(|&j| next[j] <= epochs).collect();
        (!open.is_empty()).then_some(open)
    } {
        let j = open[rng.gen_range(0..open.len())];
        events.push((j, next[j], curves[j][(next[j] - 1) as usize]));
        next[j] += 1;
    }
    Scenario {
        name: format!("early-stop-{seed}"),
        rule,
        mode,
        jobs,
        epochs,
        events,
    }
}

/// Optuna's decisions: [job, epoch, pruned] for each report it processed.
fn optuna_decisions(s: &Scenario) -> Vec<(usize, i64, bool)> {
    let mut input = s.rule.clone();
    input["mode"] = s.mode.into();
    input["jobs"] = s.jobs.into();
    input["epochs"] = s.epochs.into();
    input["events"] = json!(s.events);
    input["name"] = json!(s.name);
    serde_json::from_value(python_reference("optuna_pruners.py", &input)).unwrap()
}

/// The same reports through the coordinator: each job claimed, its epochs reported in the
/// scenario's order; a job told to stop finishes `pruned`, one at its last epoch `completed`.
async fn our_decisions(app: &TestApp, s: &Scenario) -> Vec<(usize, i64, bool)> {
    let mut spec = json!({
        "name": s.name,
        "train": {"epochs": s.epochs},
        "grid": {"seed": (0..s.jobs as i64).collect::<Vec<_>>()},
        "early_stop": s.rule,
    });
    spec["early_stop"]["mode"] = s.mode.into();
    let (status, created) = app.post("/api/sweeps", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let mut ids = vec![];
    for _ in 0..s.jobs {
        ids.push(app.claim("w").await.unwrap().id);
    }
    let metric = s.rule["metric"].as_str().unwrap_or("accuracy");
    let (mut done, mut out) = (vec![false; s.jobs], vec![]);
    for &(j, epoch, value) in &s.events {
        if done[j] {
            continue;
        }
        let mut report = json!({"attempt": 1, "epoch": epoch, "train_loss": 1.0});
        report[metric] = value.into();
        let (status, reply) = app
            .post(&format!("/api/jobs/{}/metrics", ids[j]), report)
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let stop = reply["stop"].as_bool().unwrap();
        out.push((j, epoch, stop));
        if stop || epoch == s.epochs {
            let outcome = if stop {
                Outcome::Pruned
            } else {
                Outcome::Completed
            };
            assert_eq!(app.finish(ids[j], 1, outcome).await.0, StatusCode::OK);
            assert_eq!(
                app.job_detail(ids[j]).await.job.status.as_str(),
                outcome.as_str()
            );
            done[j] = true;
        }
    }
    out
}

/// Each case (rule, jobs, epochs) over 3 seeded scenarios, each its own sweep on one coordinator
/// (other sweeps' jobs never count): our decisions must equal Optuna's; all of them, returned.
async fn equal_to_optunas(
    app: &TestApp,
    cases: Vec<(Value, usize, i64)>,
    first_seed: u64,
) -> Vec<(usize, i64, bool)> {
    let mut all = vec![];
    for (k, (rule, jobs, epochs)) in cases.into_iter().enumerate() {
        for seed in 0..3 {
            let s = scenario(
                first_seed + 100 * k as u64 + seed,
                rule.clone(),
                jobs,
                epochs,
            );
            let ours = our_decisions(app, &s).await;
            assert_eq!(ours, optuna_decisions(&s), "{s:?}");
            all.extend(ours);
        }
    }
    all
}

fn asha(min_epochs: i64, eta: i64, metric: &str) -> Value {
    json!({"method": "asha", "metric": metric, "min_epochs": min_epochs, "reduction_factor": eta})
}

fn hyperband(min_epochs: i64, eta: i64, max_epochs: Value, metric: &str) -> Value {
    let mut rule = json!({"method": "hyperband", "metric": metric, "min_epochs": min_epochs,
                          "reduction_factor": eta});
    if !max_epochs.is_null() {
        rule["max_epochs"] = max_epochs;
    }
    rule
}

/// Hyperband over several hundred reports in random order: each job's bracket is Optuna's draw
/// from the sweep's name and the job's index, each bracket halves its own jobs only, and "auto"
/// waits for the first completed job.
#[tokio::test]
async fn hyperband_decides_as_optunas_on_the_same_reports() {
    let app = spawn_app().await;
    let cases = vec![
        (hyperband(1, 3, json!(9), "accuracy"), 20, 9),
        (hyperband(1, 2, Value::Null, "test_loss"), 16, 8), // the jobs' epochs
        (hyperband(1, 3, json!("auto"), "accuracy"), 15, 9),
        (hyperband(2, 2, json!(16), "accuracy"), 12, 16),
    ];
    let all = equal_to_optunas(&app, cases, 1000).await;
    let (reports, stops) = (all.len(), all.iter().filter(|d| d.2).count());
    // A stop past the first rung of bracket 0 happens only in the later brackets' rungs.
    let late_stops = all.iter().filter(|d| d.2 && d.1 > 2).count();
    assert!(
        reports > 600 && stops > 30 && late_stops > 5,
        "{stops} stops ({late_stops} after epoch 2) of {reports}"
    );
}

fn median(startup: i64, warmup: i64, metric: &str) -> Value {
    json!({"method": "median", "metric": metric, "startup_trials": startup, "min_epochs": warmup})
}

#[tokio::test]
async fn asha_and_median_decide_as_optunas_pruners_on_the_same_reports() {
    let app = spawn_app().await;
    let cases = vec![
        (asha(1, 3, "accuracy"), 7, 9),
        (asha(1, 2, "test_loss"), 5, 8),
        (asha(2, 3, "accuracy"), 2, 6), // fewer jobs than eta: only the best goes on
        (asha(1, 4, "accuracy"), 12, 16),
        (median(2, 1, "accuracy"), 7, 6),
        (median(0, 2, "test_loss"), 6, 5),
        (median(5, 1, "accuracy"), 4, 4), // never enough completed jobs: no stop
    ];
    let all = equal_to_optunas(&app, cases, 0).await;
    let (reports, stops) = (all.len(), all.iter().filter(|d| d.2).count());
    // The comparison means something only if both kinds of decision occur often.
    assert!(
        stops > 20 && reports - stops > 100,
        "{stops} stops of {reports}"
    );
}

/// A stopped job is told so on every heartbeat, is never claimed again, and ends `pruned` however
/// its attempt ends: a finish of any kind, a release, or a lease that runs out.
#[tokio::test]
async fn a_stopped_job_ends_pruned_on_every_path_and_is_never_claimed_again() {
    let app = spawn_app().await;
    #[derive(Debug, PartialEq)]
    enum Ending {
        Finish(Outcome),
        Release,
        Expire,
    }
    for ending in [
        Ending::Finish(Outcome::Pruned),
        Ending::Finish(Outcome::Failed),
        Ending::Finish(Outcome::Completed),
        Ending::Release,
        Ending::Expire,
    ] {
        let spec = json!({"name": format!("{ending:?}"), "train": {"epochs": 5}, "grid": {"seed": [0, 1]},
                          "early_stop": asha(1, 2, "accuracy"), "run": {"max_attempts": 3}});
        let (status, created) = app.post("/api/sweeps", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let a = app.claim("w").await.unwrap().id;
        let b = app.claim("w").await.unwrap().id;
        assert_eq!(app.metrics(a, 1, 1, Some(1.0), 0.9).await, StatusCode::OK);
        let (_, reply) = app
            .post(
                &format!("/api/jobs/{b}/metrics"),
                json!({"attempt": 1, "epoch": 1, "train_loss": 1.0, "accuracy": 0.1}),
            )
            .await;
        assert_eq!(
            reply["stop"], true,
            "{ending:?}: the worse of two at rung 0"
        );
        let hb = app.heartbeat(b, 1).await.1.expect("a heartbeat reply");
        assert_eq!((hb.stop, hb.cancel), (true, false));
        let hb = app.heartbeat(a, 1).await.1.expect("a heartbeat reply");
        assert!(!hb.stop, "the better one goes on");
        match ending {
            Ending::Release => {
                let (s, _) = app.release(b, 1).await;
                assert_eq!(s, StatusCode::OK);
            }
            Ending::Expire => {
                app.clock.advance_ms(LEASE_MS + 1);
                server::startup::reap_once(&app.state).await.unwrap();
            }
            Ending::Finish(outcome) => {
                assert_eq!(app.finish(b, 1, outcome).await.0, StatusCode::OK)
            }
        }
        let job = app.job(b).await;
        assert_eq!(
            job["status"],
            JobStatus::Pruned.as_str(),
            "{ending:?}: {job}"
        );
        assert_eq!(job["epoch"], 1, "{ending:?}: its epochs are kept");
        assert_eq!(job["metrics"].as_array().unwrap().len(), 1);
        // Only `a` can be handed out (its lease ran out in the `expire` case), never `b`.
        let next = app.claim("w2").await;
        if ending == Ending::Expire {
            assert_eq!(next.unwrap().id, a);
        } else {
            assert!(next.is_none(), "{ending:?}: never handed out again");
        }
        assert!(app.claim("w3").await.is_none(), "{ending:?}");
        // Finish the survivor so the next case starts with nothing pending.
        let a_now = app.job(a).await;
        let attempt = a_now["attempt"].as_i64().unwrap();
        assert_eq!(
            app.finish(a, attempt, Outcome::Completed).await.0,
            StatusCode::OK
        );
    }
    let (_, sweeps) = app.get("/api/sweeps").await;
    for s in sweeps.as_array().unwrap() {
        assert_eq!(
            (s["pruned"].as_i64(), s["completed"].as_i64()),
            (Some(1), Some(1)),
            "{s}"
        );
        assert_eq!(s["status"], SweepStatus::Finished.as_str());
        assert_eq!(s["epochs_budget"], 10);
    }
}

/// Diverged runs are not compared with, reports without the metric are not judged, and a sweep
/// without a rule never stops anything.
#[tokio::test]
async fn diverged_runs_and_missing_values_are_not_judged() {
    let app = spawn_app().await;
    let spec = json!({"name": "d", "train": {"epochs": 3}, "grid": {"seed": [0, 1, 2]},
                      "early_stop": asha(1, 2, "accuracy")});
    app.post("/api/sweeps", spec).await;
    let ids: Vec<i64> = futures::future::join_all((0..3).map(|_| app.claim("w")))
        .await
        .into_iter()
        .map(|c| c.unwrap().id)
        .collect();
    let report = |job: i64, body: Value| {
        let app = &app;
        async move {
            let (s, r) = app.post(&format!("/api/jobs/{job}/metrics"), body).await;
            assert_eq!(s, StatusCode::OK, "{r}");
            r["stop"].as_bool().unwrap()
        }
    };
    let epoch = |e: i64, acc: Option<f64>| json!({"attempt": 1, "epoch": e, "train_loss": 1.0, "accuracy": acc});
    assert!(!report(ids[1], epoch(1, Some(0.95))).await);
    assert!(
        !report(ids[0], epoch(1, Some(0.99))).await,
        "the best of two"
    );
    // A diverged epoch (its loss null, marked diverged) is not judged, and the diverged job no
    // longer counts.
    assert!(
        !report(
            ids[0],
            json!({"attempt": 1, "epoch": 2, "accuracy": 0.99, "diverged": true})
        )
        .await
    );
    assert_eq!(
        app.finish(ids[0], 1, Outcome::Diverged).await.0,
        StatusCode::OK
    );
    // No accuracy this epoch: nothing to judge.
    assert!(!report(ids[2], epoch(1, None)).await);
    // Rung 0 holds 0.95 and this 0.96 (with the diverged 0.99 counted, 0.96 would stop); rung 1
    // only this one.
    assert!(!report(ids[2], epoch(2, Some(0.96))).await);
    assert!(
        report(ids[1], epoch(2, Some(0.1))).await,
        "worse of the two at rung 1"
    );

    let plain = json!({"name": "p", "train": {"epochs": 3}, "grid": {"seed": [0, 1]}});
    app.post("/api/sweeps", plain).await;
    let (x, y) = (app.claim("w").await.unwrap(), app.claim("w").await.unwrap());
    assert!(
        !report(
            x.id,
            json!({"attempt": 1, "epoch": 1, "train_loss": 1.0, "accuracy": 0.9})
        )
        .await
    );
    assert!(
        !report(
            y.id,
            json!({"attempt": 1, "epoch": 1, "train_loss": 1.0, "accuracy": 0.1})
        )
        .await
    );
}

#[tokio::test]
async fn the_rule_is_kept_with_the_sweep_and_bad_rules_are_refused() {
    let app = spawn_app().await;
    let (s, created) = app
        .submit_toml(
            r#"
name = "asha"
[train]
epochs = 27
[grid]
lr = [0.1, 0.01]
[early_stop]
method = "asha"
metric = "test_loss"
"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let (_, sweep) = app.get(&format!("/api/sweeps/{}", created["id"])).await;
    assert_eq!(
        sweep["spec"]["early_stop"],
        json!({"method": "asha", "metric": "test_loss", "mode": "min", "min_epochs": 1, "reduction_factor": 3})
    );
    for (rule, field) in [
        (
            json!({"method": "asha", "metric": "loss"}),
            "early_stop.metric",
        ),
        (
            json!({"method": "median", "reduction_factor": 3}),
            "early_stop.reduction_factor",
        ),
        (
            json!({"method": "asha", "min_epochs": 0}),
            "early_stop.min_epochs",
        ),
    ] {
        let (s, e) = app
            .post("/api/sweeps", json!({"name": "x", "early_stop": rule}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
}

/// The rules recomputed from scratch at every report, from every value kept in plain lists: what
/// the coordinator's ordered in-memory values must agree with, decision for decision.
#[derive(Default)]
struct Recomputed {
    /// ASHA: (job, value) at each rung, a diverged job's taken out; rungs each job has recorded.
    rungs: std::collections::HashMap<u32, Vec<(usize, f64)>>,
    recorded: std::collections::HashMap<usize, u32>,
    /// Median: each job's (epoch, value), and the jobs that completed.
    values: std::collections::HashMap<usize, Vec<(i64, f64)>>,
    completed: Vec<usize>,
}

impl Recomputed {
    fn better(max: bool, a: f64, b: f64) -> bool {
        if max {
            a > b
        } else {
            a < b
        }
    }

    fn asha(&mut self, job: usize, epoch: i64, value: f64, min_epochs: i64, eta: i64) -> bool {
        loop {
            let k = *self.recorded.entry(job).or_default();
            if epoch < min_epochs * eta.pow(k) {
                return false;
            }
            *self.recorded.get_mut(&job).unwrap() += 1;
            let at = self.rungs.entry(k).or_default();
            at.push((job, value));
            let better = at
                .iter()
                .filter(|(_, v)| Self::better(true, *v, value))
                .count();
            if better >= (at.len() / eta as usize).max(1) {
                return true;
            }
        }
    }

    fn median(&mut self, job: usize, epoch: i64, value: f64, warmup: i64, startup: usize) -> bool {
        self.values.entry(job).or_default().push((epoch, value));
        if epoch < warmup || self.completed.is_empty() || self.completed.len() < startup {
            return false;
        }
        let mut at: Vec<f64> = self
            .completed
            .iter()
            .flat_map(|j| self.values[j].iter().filter(|(e, _)| *e == epoch))
            .map(|(_, v)| *v)
            .collect();
        if at.is_empty() {
            return false;
        }
        at.sort_by(f64::total_cmp);
        let n = at.len();
        let median = if n % 2 == 1 {
            at[n / 2]
        } else {
            (at[n / 2 - 1] + at[n / 2]) / 2.0
        };
        let best = self.values[&job]
            .iter()
            .map(|(_, v)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        Self::better(true, median, best)
    }

    fn diverged(&mut self, job: usize) {
        for at in self.rungs.values_mut() {
            at.retain(|(j, _)| *j != job);
        }
    }
}

/// Thousands of random reports on one sweep (ties frequent, a job diverging or failing an attempt
/// now and then), and a coordinator restarted half-way: every decision equals the rule recomputed from scratch over all
/// values, as a coordinator that never stopped would take it.
#[tokio::test]
async fn decisions_at_scale_and_after_a_restart_equal_a_recomputation() {
    let mut app = spawn_app().await;
    let jobs = 600;
    for (rule, epochs) in [(asha(1, 3, "accuracy"), 9), (median(5, 2, "accuracy"), 6)] {
        let spec = json!({"name": "scale", "train": {"epochs": epochs},
                          "grid": {"seed": (0..jobs as i64).collect::<Vec<_>>()}, "early_stop": rule});
        let (status, created) = app.post("/api/sweeps", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let mut ids = vec![];
        for _ in 0..jobs {
            ids.push(app.claim("w").await.unwrap().id);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(epochs as u64);
        let (mut model, mut next) = (Recomputed::default(), vec![1i64; jobs]);
        let (mut attempt, mut retried) = (vec![1i64; jobs], 0);
        let mut open: Vec<usize> = (0..jobs).collect();
        let (mut reports, mut stops, mut restarted) = (0, 0, false);
        while !open.is_empty() {
            if !restarted && open.len() < jobs / 2 {
                app.restart().await;
                restarted = true;
            }
            let i = rng.gen_range(0..open.len());
            let j = open[i];
            let roll = rng.gen_range(0..60);
            if roll == 0 {
                assert_eq!(
                    app.finish(ids[j], attempt[j], Outcome::Diverged).await.0,
                    StatusCode::OK
                );
                model.diverged(j);
                open.swap_remove(i);
                continue;
            }
            // An attempt that fails after some epochs: the job goes back to pending, is claimed
            // again (every other job is held) and goes on; its values stay where they were.
            if roll == 1 && attempt[j] == 1 && next[j] > 1 {
                let (s, _) = app.finish(ids[j], 1, Outcome::Failed).await;
                assert_eq!(s, StatusCode::OK);
                let c = app.claim("w").await.unwrap();
                assert_eq!((c.id, c.attempt), (ids[j], 2));
                attempt[j] = 2;
                retried += 1;
                continue;
            }
            let (epoch, value) = (next[j], f64::from(rng.gen_range(0..=16)) / 16.0);
            next[j] += 1;
            let report = json!({"attempt": attempt[j], "epoch": epoch, "train_loss": 1.0,
                                "accuracy": value});
            let (status, reply) = app
                .post(&format!("/api/jobs/{}/metrics", ids[j]), report)
                .await;
            assert_eq!(status, StatusCode::OK, "{reply}");
            let want = match rule["method"].as_str().unwrap() {
                "asha" => model.asha(j, epoch, value, 1, 3),
                _ => model.median(j, epoch, value, 2, 5),
            };
            assert_eq!(
                reply["stop"], want,
                "report {reports}: job {j} epoch {epoch} value {value}"
            );
            reports += 1;
            stops += usize::from(want);
            let outcome = match () {
                _ if want => Outcome::Pruned,
                _ if epoch == epochs => Outcome::Completed,
                _ => continue,
            };
            assert_eq!(
                app.finish(ids[j], attempt[j], outcome).await.0,
                StatusCode::OK
            );
            if outcome == Outcome::Completed {
                model.completed.push(j);
            }
            open.swap_remove(i);
        }
        assert!(restarted && retried > 5, "{retried} retried");
        assert!(
            reports > 1000 && stops > 100 && reports - stops > 500,
            "{rule}: {stops} stops of {reports} reports"
        );
    }
}
