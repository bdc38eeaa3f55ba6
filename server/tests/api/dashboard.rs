//! The dashboard: its paged/grid/curve views over HTTP, and the page itself in a real headless
//! Chromium (Debian's `chromium`, installed by scripts/setup.sh) with its own empty profile.
use crate::helpers::{spawn_app, JobStatus, Outcome, SweepStatus, TestApp, TOKEN};
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions, Tab};
use reqwest::StatusCode;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GRID: &str = r#"
name = "grid"
[train]
dataset = "synthetic"
epochs = 3
[grid]
lr = [0.01, 0.0001]
batch_size = [16, 32, 64]
"#;

async fn claim_all(app: &TestApp) -> Vec<protocol::Claim> {
    let mut jobs = vec![];
    while let Some(c) = app.claim(&format!("w{}", jobs.len())).await {
        jobs.push(c);
    }
    jobs
}

#[tokio::test]
async fn job_pages_are_sorted_filtered_and_counted_in_sql() {
    let app = spawn_app().await;
    let id = app.submit(GRID).await.id;
    let jobs = claim_all(&app).await;
    assert_eq!(jobs.len(), 6);
    for (i, j) in jobs.iter().enumerate() {
        let acc = 0.1 * (i + 1) as f64;
        let (jid, att) = (j.id, j.attempt);
        assert_eq!(
            app.metrics(jid, att, 1, Some(2.0), acc).await,
            StatusCode::OK
        );
    }
    let (st, p) = app
        .get(&format!(
            "/api/sweeps/{id}/jobs?limit=4&sort=accuracy&desc=true"
        ))
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["total"], 6);
    let accs: Vec<f64> = p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["latest"]["accuracy"].as_f64().unwrap())
        .collect();
    assert_eq!(accs.len(), 4);
    assert!(accs.windows(2).all(|w| w[0] >= w[1]), "{accs:?}");
    assert!((accs[0] - 0.6).abs() < 1e-9);
    // The second page holds the rest.
    let (_, p2) = app
        .get(&format!(
            "/api/sweeps/{id}/jobs?limit=4&offset=4&sort=accuracy&desc=true"
        ))
        .await;
    assert_eq!(p2["jobs"].as_array().unwrap().len(), 2);
    // Filter by text in the params, and by status.
    let (_, f) = app
        .get(&format!("/api/sweeps/{id}/jobs?q=%22batch_size%22:64"))
        .await;
    assert_eq!(f["total"], 2, "{f}");
    let (_, f) = app
        .get(&format!("/api/sweeps/{id}/jobs?status=pending"))
        .await;
    assert_eq!(f["total"], 0);
    let (st, _) = app.get("/api/sweeps/999/jobs").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The sweep without its job list (what the dashboard asks for).
    let (_, head) = app.get(&format!("/api/sweeps/{id}?jobs=false")).await;
    assert_eq!(head["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(head["total"], 6);
}

#[tokio::test]
async fn grid_cells_and_downsampled_curves() {
    let app = spawn_app().await;
    let id = app.submit("name = \"long\"\n[train]\ndataset = \"synthetic\"\nepochs = 300\n[grid]\nbatch_size = [8, 32]\nlr = [0.01]\n",).await.id;
    let jobs = claim_all(&app).await;
    for j in &jobs {
        let (jid, att) = (j.id, j.attempt);
        for e in 1..=300 {
            app.metrics(jid, att, e, Some(1.0 / e as f64), e as f64 / 400.0)
                .await;
        }
    }
    let (_, cells) = app.get(&format!("/api/sweeps/{id}/grid")).await;
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["batch_size"], 8);
    assert!((cells[0]["accuracy"].as_f64().unwrap() - 0.75).abs() < 1e-9);
    let (_, curves) = app
        .get(&format!("/api/sweeps/{id}/curves?lr=0.01&points=30"))
        .await;
    let curves = curves.as_array().unwrap();
    assert_eq!(curves.len(), 2, "one line per batch size");
    let epochs: Vec<i64> = curves[0]["epoch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_i64().unwrap())
        .collect();
    // 300 epochs drawn as ~30 points, keeping the first and the latest.
    assert!(epochs.len() <= 32 && epochs.len() >= 25, "{}", epochs.len());
    assert_eq!((epochs[0], *epochs.last().unwrap()), (1, 300));
    let (st, _) = app.get(&format!("/api/sweeps/{id}/curves?lr=-1")).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
}

// ---------- the page in a real browser ----------

/// A headless Chromium with its own empty profile, collecting console errors and exceptions.
struct Page {
    tab: Arc<Tab>,
    errors: Arc<Mutex<Vec<String>>>,
    _browser: Browser,
    _profile: tempfile::TempDir,
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} not found: scripts/setup.sh installs Debian's chromium (or set CHROMIUM)",
        p.display()
    );
    p
}

impl Page {
    fn open(url: &str) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let opts = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .headless(true)
            .sandbox(false)
            .enable_gpu(false)
            .user_data_dir(Some(profile.path().to_path_buf()))
            .args(vec![
                OsStr::new("--disable-gpu"),
                OsStr::new("--disable-background-networking"),
            ])
            .window_size(Some((1280, 1000)))
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let browser = Browser::new(opts).unwrap();
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(Duration::from_secs(20));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        tab.enable_runtime().unwrap();
        tab.enable_log().unwrap();
        tab.add_event_listener(Arc::new(move |e: &Event| {
            let msg = match e {
                Event::RuntimeConsoleAPICalled(c) if format!("{:?}", c.params.Type) == "Error" => {
                    Some(format!("console.error: {:?}", c.params.args))
                }
                Event::RuntimeExceptionThrown(x) => {
                    Some(format!("exception: {:?}", x.params.exception_details))
                }
                Event::LogEntryAdded(l) if format!("{:?}", l.params.entry.level) == "Error" => {
                    Some(format!("log: {}", l.params.entry.text))
                }
                _ => None,
            };
            if let Some(m) = msg {
                sink.lock().unwrap().push(m);
            }
        }))
        .unwrap();
        tab.navigate_to(url)
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        Page {
            tab,
            errors,
            _browser: browser,
            _profile: profile,
        }
    }

    fn eval(&self, js: &str) -> Value {
        self.tab
            .evaluate(js, false)
            .unwrap()
            .value
            .unwrap_or(Value::Null)
    }

    /// Waits until `js` is truthy in the page.
    fn wait(&self, js: &str, what: &str) {
        let t0 = Instant::now();
        loop {
            let v = self.eval(js);
            if !(v.is_null() || v == Value::Bool(false)) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; page: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Written under target/screenshots/ (or `$SCREENSHOT_DIR`); .ci/run lists them.
    fn screenshot(&self, name: &str) -> PathBuf {
        use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        let dir = std::env::var_os("SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &png).unwrap();
        path
    }
}

/// The study grid's page: the heatmap's colour scale, and every run's curve beside the study's
/// curves at one lr.
fn the_study_page_has_its_scale_and_every_run(p: &Page) {
    assert!(p
        .eval("document.querySelector('svg.legend[aria-label*=\"accuracy\"]') !== null")
        .as_bool()
        .unwrap());
    p.wait(
        "document.querySelectorAll('#runs-overlay path').length >= 3",
        "every run overlaid",
    );
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_sweeps_and_updates_live_without_reload() {
    let app = spawn_app().await;
    let base = app.base.clone();
    let page = blocking(move || Page::open(&format!("{base}/"))).await;
    let page = Arc::new(page);

    // A sweep submitted while the page is open appears (through the event stream).
    let id = app.submit(GRID).await.id;
    let p = page.clone();
    blocking(move || {
        p.wait(
            "document.querySelector('#sweeps') && document.querySelector('#sweeps').innerText.includes('grid')",
            "the submitted sweep in the list",
        );
        p.eval("window.__stay = 42");
    })
    .await;

    let jobs = claim_all(&app).await;
    let lr = |j: &protocol::Claim| j.params["lr"].as_f64().unwrap();
    let at_1e2: Vec<&protocol::Claim> = jobs.iter().filter(|j| lr(j) == 0.01).collect();
    for (i, j) in at_1e2.iter().enumerate() {
        let (jid, att) = (j.id, j.attempt);
        for e in 1..=2 {
            app.metrics(
                jid,
                att,
                e,
                Some(2.0 - 0.1 * e as f64),
                0.2 + 0.01 * i as f64,
            )
            .await;
        }
    }
    // One diverged run: its cell must read NaN, not a colour.
    let bad = jobs.iter().find(|j| lr(j) == 0.0001).unwrap();
    let (bid, batt) = (bad.id, bad.attempt);
    app.metrics(bid, batt, 1, None, 0.1).await;
    assert_eq!(
        app.finish(bid, batt, Outcome::Diverged).await.0,
        StatusCode::OK
    );

    let p = page.clone();
    blocking(move || {
        p.eval(&format!("location.hash = '#/sweeps/{id}'"));
        p.wait(
            "document.querySelector('#heatmap') && document.querySelector('#heatmap').innerText.includes('NaN')",
            "the heatmap with its NaN cell",
        );
        p.wait("document.querySelectorAll('#curves svg path').length >= 3", "curves");
        p.wait("document.querySelectorAll('#jobs tbody tr').length === 6", "the job table");
    })
    .await;

    // A metric posted through the worker protocol shows up on the open page, no reload.
    let first = at_1e2[0];
    let (jid, att) = (first.id, first.attempt);
    assert_eq!(
        app.metrics(jid, att, 3, Some(1.0), 0.4321).await,
        StatusCode::OK
    );
    let p = page.clone();
    let shot = blocking(move || {
        p.wait(
            "document.querySelector('#heatmap').innerText.includes('43.21%')",
            "the new accuracy in the heatmap",
        );
        assert_eq!(p.eval("window.__stay"), 42, "the page reloaded");
        the_study_page_has_its_scale_and_every_run(&p);
        assert!(p.text().contains("Test loss"));
        let shot = p.screenshot("dashboard-sweep.png");
        // Sorting is a keyboard-usable button in the header.
        p.eval("document.querySelector('button[data-sort=\"accuracy\"]').focus()");
        p.eval("document.activeElement.click()");
        p.wait(
            "document.querySelector('th[aria-sort]') && document.querySelector('th[aria-sort]').innerText.includes('accuracy (%)')",
            "the table sorted by accuracy",
        );
        // The job page: its curves and attempts.
        p.eval(&format!("location.hash = '#/jobs/{jid}'"));
        p.wait("document.querySelectorAll('#attempts tbody tr').length === 1", "attempts");
        p.wait("document.querySelectorAll('#curves svg path').length >= 3", "job curves");
        p.screenshot("dashboard-job.png");
        // Cancel from the sweep page: the token is typed at the prompt, and never stored.
        p.eval(&format!("window.prompt = () => '{TOKEN}'"));
        p.eval(&format!("location.hash = '#/sweeps/{id}'"));
        p.wait("document.querySelector('#cancel') && !document.querySelector('#cancel').disabled", "the cancel button");
        p.eval("document.querySelector('#cancel').click()");
        p.wait("document.querySelector('h1').innerText.includes('cancelled')", "the sweep cancelled");
        assert_eq!(
            p.eval("sessionStorage.length + localStorage.length + document.cookie.length"),
            0,
            "no token kept where a script could read it"
        );
        shot
    })
    .await;
    let (_, sweep) = app.get(&format!("/api/sweeps/{id}?jobs=false")).await;
    assert_eq!(sweep["status"], SweepStatus::Cancelled.as_str());

    a_gang_on_its_job_page(&app, &page).await;
    a_passed_over_job_on_its_page(&app, &page).await;
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "an empty-looking screenshot");
    let errors = page.errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// A job that spans nodes: while its gang forms the page says what it waits for; once formed,
/// the attempt names each member by node.
async fn a_gang_on_its_job_page(app: &TestApp, page: &Arc<Page>) {
    app.submit("name = \"gang\"\n[train]\nnnodes = 2\n").await;
    let a = app.claim_with(&crate::gangs::asks("gpu-a")).await.unwrap();
    let p = page.clone();
    blocking(move || {
        p.eval(&format!("location.hash = '#/jobs/{}'", a.id));
        p.wait(
            "document.querySelector('#gang-waiting') && document.querySelector('#gang-waiting').innerText.includes('waiting for 1 more worker with 1 free rank')",
            "the forming gang's wait",
        );
    })
    .await;
    app.claim_with(&crate::gangs::asks("gpu-b")).await.unwrap();
    let p = page.clone();
    blocking(move || {
        p.eval("location.hash = '#/'");
        p.eval(&format!("location.hash = '#/jobs/{}'", a.id));
        p.wait(
            "document.querySelector('#attempts') && document.querySelector('#attempts').innerText.includes('node 1: gpu-b') && !document.querySelector('#gang-waiting')",
            "the gang's members",
        );
    })
    .await;
}

/// A job a worker near the end of its allocation passed over says why on its page.
async fn a_passed_over_job_on_its_page(app: &TestApp, page: &Arc<Page>) {
    app.submit("name = \"paced\"\n[train]\ndataset = \"synthetic\"\nepochs = 3\n")
        .await;
    let c = app.claim("w").await.unwrap();
    app.clock.advance_ms(60_000);
    app.metrics(c.id, c.attempt, 1, Some(1.0), 0.5).await;
    app.release(c.id, c.attempt).await;
    let near_end = protocol::ClaimRequest {
        worker: "late".into(),
        capacity: None,
        accepts_commands: false,
        rendezvous: None,
        deadline: Some(app.clock.now_ms() + 30_000),
    };
    assert!(app.claim_with(&near_end).await.is_none());
    let p = page.clone();
    blocking(move || {
        p.eval(&format!("location.hash = '#/jobs/{}'", c.id));
        p.wait(
            "document.querySelector('#gang-waiting') && document.querySelector('#gang-waiting').innerText.includes(\"Passed over near a worker's end: needs about 60 s per epoch; the worker had 30 s left\")",
            "the passed-over job's reason",
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_the_coordinator_restarts() {
    use server::startup::{Application, ServeConfig};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let start = |port: u16| {
        let db = db.clone();
        async move {
            let mut cfg = ServeConfig::new(db);
            cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
            cfg.token = Some(TOKEN.into());
            let app = Application::build(cfg).await.unwrap();
            let port = app.port();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(app.run_until_stopped(async move {
                let _ = rx.await;
            }));
            (port, tx, task)
        }
    };
    let (port, stop, task) = start(0).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let submit = |name: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}/api/sweeps"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/toml")
                .body(format!(
                    "name = \"{name}\"\n[train]\ndataset = \"synthetic\"\n"
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    };
    submit("before").await;
    let url = base.clone();
    let page = Arc::new(blocking(move || Page::open(&format!("{url}/"))).await);
    let p = page.clone();
    blocking(move || {
        p.wait(
            "document.querySelector('#live').innerText === 'live'",
            "live",
        );
        p.wait(
            "document.body.innerText.includes('before')",
            "the sweep list",
        );
        p.eval("window.__stay = 7");
    })
    .await;

    // The coordinator stops: the page notices (graceful shutdown ends the event stream)...
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("shutdown waits on the open event stream")
        .unwrap()
        .unwrap();
    let p = page.clone();
    blocking(move || {
        p.wait(
            "document.querySelector('#live').innerText.startsWith('reconnecting')",
            "the reconnecting state",
        )
    })
    .await;
    // ...and comes back on the same port and database: the page reconnects and catches up.
    let (_, _stop2, _task2) = start(port).await;
    submit("after").await;
    let p = page.clone();
    blocking(move || {
        p.wait(
            "document.querySelector('#live').innerText === 'live'",
            "live again",
        );
        p.wait("document.body.innerText.includes('after')", "the new sweep");
        assert_eq!(p.eval("window.__stay"), 7, "the page reloaded");
    })
    .await;
}

/// Benchmark, not a test (`scripts/bench-dashboard.sh`): first paint of the sweep page of a
/// 10,000-job x 300-epoch sweep made by `fill_synthetic`, in headless Chromium (`BENCH_JOBS` and
/// `BENCH_EPOCHS` change the size: the study's 20 cells, each with as many seeds as it takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_first_paint_of_a_10000_job_sweep() {
    let app = spawn_app().await;
    let size = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (jobs, epochs) = (size("BENCH_JOBS", 10_000), size("BENCH_EPOCHS", 300));
    let seeds: Vec<String> = (0..jobs.div_ceil(20)).map(|s| s.to_string()).collect();
    let spec = server::sweep::SweepSpec::from_toml(&format!(
        "name = \"scale\"\n[train]\ndataset = \"synthetic\"\nepochs = {epochs}\n\
         [grid]\nbatch_size = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]\nlr = [0.01, 0.0001]\nseed = [{}]\n",
        seeds.join(", ")
    ))
    .unwrap();
    let t0 = Instant::now();
    let (id, n) = app.state.store.create_sweep(&spec, 0).await.unwrap();
    let rows = app
        .state
        .store
        .fill_synthetic(id, epochs as i64, 0)
        .await
        .unwrap();
    println!(
        "{n} jobs, {rows} metric rows generated in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let url = format!("{}/#/sweeps/{id}", app.base);
    let report = blocking(move || {
        let mut out = vec![];
        // The first load pays for Chromium's own start-up; report each of three loads.
        let page = Page::open(&url);
        for i in 0..3 {
            if i > 0 {
                page.eval("location.reload()");
                std::thread::sleep(Duration::from_millis(300));
            }
            page.wait(
                "document.documentElement.dataset.firstPaintMs",
                "first paint",
            );
            let ms = page.eval("+document.documentElement.dataset.firstPaintMs");
            let rows = page.eval("document.querySelectorAll('#jobs tbody tr').length");
            let heap = page.eval("performance.memory ? performance.memory.usedJSHeapSize : null");
            out.push(format!(
                "load {}: first paint {ms} ms ({rows} table rows, JS heap {heap} bytes)",
                i + 1
            ));
        }
        page.screenshot("dashboard-10000-jobs.png");
        assert!(page.errors().is_empty(), "{:?}", page.errors());
        out
    })
    .await;
    for line in &report {
        println!("{line}");
    }
}

/// Tooling, not a test (`scripts/dashboard-screenshot.sh URL OUT`): a screenshot of a running
/// coordinator's page once it has painted, e.g. for the README.
#[test]
#[ignore]
fn screenshot_of_a_running_coordinator() {
    let url = std::env::var("SCREENSHOT_URL").expect("SCREENSHOT_URL");
    let out = PathBuf::from(std::env::var("SCREENSHOT_OUT").expect("SCREENSHOT_OUT"));
    let page = Page::open(&url);
    page.wait(
        "document.documentElement.dataset.firstPaintMs",
        "first paint",
    );
    let png = page.screenshot("url.png");
    std::fs::copy(&png, &out).unwrap();
    println!("wrote {}", out.display());
}

/// A random search under ASHA: the sweep page shows its sampled points (a scatter and parallel
/// coordinates) instead of a grid, the pruned job as such, and the epochs run against the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_search_shows_its_points_and_its_pruned_jobs() {
    let app = spawn_app().await;
    let id = app
        .submit(
            r#"
name = "search"
[train]
dataset = "synthetic"
epochs = 4
[search]
method = "random"
trials = 6
seed = 3
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
batch_size = { choice = [16, 32, 64] }
[early_stop]
method = "asha"
reduction_factor = 2
"#,
        )
        .await
        .id;
    let jobs = claim_all(&app).await;
    // The first job is the best at rung 0; the second, worse, is pruned there.
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    app.metrics(ids[0], 1, 1, Some(1.0), 0.6).await;
    app.metrics(ids[1], 1, 1, Some(1.0), 0.2).await;
    assert_eq!(
        app.finish(ids[1], 1, Outcome::Pruned).await.0,
        StatusCode::OK
    );
    assert_eq!(app.job_detail(ids[1]).await.job.status, JobStatus::Pruned);

    let url = format!("{}/#/sweeps/{id}", app.base);
    let page = blocking(move || Page::open(&url)).await;
    let shot = blocking(move || {
        page.wait("document.querySelectorAll('#scatter circle').length === 6", "the scatter");
        page.wait("document.querySelectorAll('#parallel polyline').length === 6", "one line per job");
        // Grey for the jobs without an accuracy yet; the two that reported are coloured.
        let grey = page.eval("[...document.querySelectorAll('#parallel polyline')].filter((l) => l.getAttribute('stroke') === '#9aa3ad').length");
        assert_eq!(grey, 4);
        assert!(page.eval("document.querySelector('#heatmap') === null").as_bool().unwrap());
        let budget = page.eval("document.querySelector('#budget').innerText");
        let budget = budget.as_str().unwrap();
        assert!(budget.contains("Epochs run: 2 of 24") && budget.contains("1 pruned"), "{budget}");
        page.wait("document.querySelector('#jobs').innerText.includes('pruned')", "the pruned job in the table");
        assert!(page.errors().is_empty(), "console errors: {:?}", page.errors());
        page.screenshot("dashboard-search.png")
    })
    .await;
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
}

/// A TPE sweep: its page shows the optimisation history (each completed trial's value by trial
/// number, the best so far as a line, the best trial highlighted) beside the sampled points; trials
/// not yet drawn have no point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpe_sweep_shows_its_optimisation_history() {
    let app = spawn_app().await;
    let id = app
        .submit(
            r#"
name = "tpe"
[train]
dataset = "synthetic"
epochs = 1
[search]
method = "tpe"
trials = 10
startup_trials = 3
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
momentum = { uniform = [0.5, 0.99] }
"#,
        )
        .await
        .id;
    // Six trials drawn and finished with made-up accuracies; the fourth the best.
    for (i, acc) in [0.3, 0.5, 0.4, 0.9, 0.6, 0.7].into_iter().enumerate() {
        let c = app.claim(&format!("w{i}")).await.unwrap();
        app.metrics(c.id, c.attempt, 1, Some(1.0), acc).await;
        assert_eq!(
            app.finish(c.id, c.attempt, Outcome::Completed).await.0,
            StatusCode::OK
        );
    }
    let url = format!("{}/#/sweeps/{id}", app.base);
    let page = blocking(move || Page::open(&url)).await;
    let shot = blocking(move || {
        page.wait(
            "document.querySelectorAll('#history circle').length === 6",
            "one dot per completed trial",
        );
        assert_eq!(
            page.eval("document.querySelectorAll('#history circle.best').length"),
            1
        );
        let best = page.eval("document.querySelector('#history circle.best title').textContent");
        assert!(best.as_str().unwrap().starts_with("trial 3,"), "{best}");
        // The best-so-far line steps up at trials 1 and 3: two rises, so M, then H/V pairs.
        let d = page.eval("document.querySelector('#history path.best-so-far').getAttribute('d')");
        assert_eq!(d.as_str().unwrap().matches('V').count(), 5, "{d}");
        page.wait(
            "document.querySelectorAll('#scatter circle').length === 6",
            "drawn trials only",
        );
        let heading =
            page.eval("document.querySelector('#search').previousElementSibling.innerText");
        assert!(
            heading.as_str().unwrap().contains("6 of 10 trials drawn"),
            "{heading}"
        );
        assert!(
            page.errors().is_empty(),
            "console errors: {:?}",
            page.errors()
        );
        page.screenshot("dashboard-tpe.png")
    })
    .await;
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
}

/// #24 findings 5 and 7: a command sweep's parameter values are any text. Markup in them renders as
/// text in every view that shows them (the job table, the grid, the job page), and a sweep whose
/// `lr` is not a positive number shows its page without the learning curves instead of an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_parameter_values_renders_as_text_and_odd_lrs_leave_the_curves_out() {
    let app = spawn_app().await;
    let id = app
        .submit(
            r#"
name = "odd"
[command]
argv = ["run", "{batch_size}", "{lr}"]
[grid]
batch_size = ["<b id='bold'>big</b>"]
lr = ["<i id='ital'>fast</i>", 0]
"#,
        )
        .await
        .id;
    let (_, c) = app
        .post(
            "/api/jobs/claim",
            serde_json::json!({"worker": "w", "accepts_commands": true}),
        )
        .await;
    let job = c["id"].as_i64().unwrap();
    let url = format!("{}/#/sweeps/{id}", app.base);
    let page = blocking(move || Page::open(&url)).await;
    let job_url = format!("{}/#/jobs/{job}", app.base);
    blocking(move || {
        page.wait("document.querySelector('#jobs') !== null", "the job table");
        assert_eq!(
            page.eval("document.querySelectorAll('#bold, #ital').length"),
            0,
            "no markup rendered"
        );
        let text = page.eval("document.querySelector('#jobs').innerText");
        assert!(
            text.as_str().unwrap().contains("<b id='bold'>big</b>"),
            "{text}"
        );
        assert!(page
            .eval("document.querySelector('#curves') === null")
            .as_bool()
            .unwrap());
        assert!(
            page.eval("document.getElementById('alert').hidden")
                .as_bool()
                .unwrap(),
            "no error"
        );
        page.eval(&format!("location.href = '{job_url}'"));
        page.wait(
            "document.body.innerText.includes('Parameters')",
            "the job page",
        );
        assert_eq!(
            page.eval("document.querySelectorAll('#bold, #ital').length"),
            0
        );
        // A command job that names no epochs has no total to count to.
        let text = page.text();
        assert!(
            text.contains("Epoch 0, attempt") && !text.contains("100000"),
            "{text}"
        );
        assert!(
            page.errors().is_empty(),
            "console errors: {:?}",
            page.errors()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_page_tails_its_log_live_and_charts_its_own_metrics() {
    let app = spawn_app().await;
    app.submit("name = \"cmd\"\n[command]\nargv = [\"run\"]\n")
        .await;
    let (_, c) = app
        .post(
            "/api/jobs/claim",
            serde_json::json!({"worker": "w", "accepts_commands": true}),
        )
        .await;
    let job = c["id"].as_i64().unwrap();
    let append = |offset: usize, text: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(format!(
                    "{}/api/jobs/{job}/log?attempt=1&offset={offset}",
                    app.base
                ))
                .header(protocol::LEASE_SECRET_HEADER, app.secret(job))
                .bearer_auth(TOKEN)
                .body(text)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
        }
    };
    append(0, "first <line>\n").await;
    let (s, r) = app
        .post(
            &format!("/api/jobs/{job}/metrics"),
            serde_json::json!({"attempt": 1, "epoch": 1, "extra": {"val_bleu": 12.5}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let url = format!("{}/#/jobs/{job}", app.base);
    let page = Arc::new(blocking(move || Page::open(&url)).await);
    let p = page.clone();
    blocking(move || {
        p.wait("document.querySelector('#log') && document.querySelector('#log').textContent.includes('first <line>')", "the log so far");
        p.wait("[...document.querySelectorAll('#curves figure')].some((f) => f.textContent.includes('val_bleu'))", "the program's own metric charted");
        p.eval("window.__stay = 7");
    })
    .await;
    // New output appears on the open page, after what was there, without a reload.
    append(13, "second line\n").await;
    let p = page.clone();
    blocking(move || {
        p.wait(
            "document.querySelector('#log').textContent.includes('second line')",
            "the new output",
        );
        assert_eq!(p.eval("window.__stay"), 7, "the page reloaded");
        assert_eq!(
            p.eval("document.querySelector('#log').textContent"),
            "first <line>\nsecond line\n"
        );
        assert!(p.errors().is_empty(), "console errors: {:?}", p.errors());
    })
    .await;
}

/// The API explorer at /docs renders the coordinator's own OpenAPI document in a real browser,
/// from the binary alone (no CDN: the test machine reaches nothing else), under the dashboard's
/// content security policy, without a console error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_explorer_loads_the_coordinators_own_spec() {
    let app = spawn_app().await;
    let base = app.base.clone();
    blocking(move || {
        let page = Page::open(&format!("{base}/docs"));
        let shown = "(() => { const d = document.querySelector('rapi-doc'); \
                     return d && d.shadowRoot && d.shadowRoot.textContent.includes('/api/sweeps/{id}/cancel'); })()";
        page.wait(shown, "the explorer listing the API's routes");
        let errors = page.errors();
        assert!(errors.is_empty(), "{errors:#?}");
        page.screenshot("api-explorer.png");
    })
    .await;
}

/// The page's bound for a command job's unnamed epochs is the coordinator's (it shows `epoch 3`,
/// not `3/100000`).
#[test]
fn the_pages_unbounded_epochs_are_the_coordinators() {
    let js = include_str!("../../../dashboards/app.js");
    let line = format!("const UNBOUNDED_EPOCHS = {};", protocol::train::MAX_EPOCHS);
    assert!(js.contains(&line), "app.js should say {line}");
}

/// A command sweep no worker takes says why on its page (only `--allow-commands` workers run it),
/// as `server status` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sweep_that_waits_says_which_worker_it_needs() {
    let app = spawn_app().await;
    let id = app
        .submit("name = \"cmd\"\n[command]\nargv = [\"run\"]\n")
        .await
        .id;
    let url = format!("{}/#/sweeps/{id}", app.base);
    blocking(move || {
        let page = Page::open(&url);
        page.wait(
            "document.querySelector('#pending-hint') !== null",
            "the hint",
        );
        let hint = page.eval("document.querySelector('#pending-hint').innerText");
        assert!(
            hint.as_str().unwrap().contains("--allow-commands"),
            "{hint}"
        );
        assert!(page.errors().is_empty(), "{:?}", page.errors());
    })
    .await;
}

/// A search's page shows which parameter mattered, as the API computes it: a bar per parameter,
/// the one the results turn on first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_shows_which_parameter_mattered() {
    let app = spawn_app().await;
    let id = app
        .submit(
            r#"
name = "which"
[train]
dataset = "synthetic"
epochs = 1
[search]
method = "random"
trials = 20
seed = 5
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
momentum = { uniform = [0.8, 0.99] }
"#,
        )
        .await
        .id;
    for c in claim_all(&app).await {
        let lr = c.params["lr"].as_f64().unwrap();
        let acc = 0.9 - 0.1 * (lr.log10() + 2.5).abs();
        app.metrics(c.id, c.attempt, 1, Some(1.0), acc).await;
        app.finish(c.id, c.attempt, Outcome::Completed).await;
    }
    let (_, want) = app.get(&format!("/api/sweeps/{id}/importance")).await;
    let first = want["importances"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert_eq!(first, "lr", "{want}");
    let url = format!("{}/#/sweeps/{id}", app.base);
    blocking(move || {
        let page = Page::open(&url);
        page.wait(
            "document.querySelectorAll('#importance rect').length === 2",
            "a bar per parameter",
        );
        let first = page.eval("document.querySelector('#importance tr').innerText");
        let first = first.as_str().unwrap().trim().to_string();
        assert!(first.starts_with("lr"), "{first}");
        assert!(
            page.text().contains("PED-ANOVA over 20 completed jobs"),
            "{}",
            page.text()
        );
        assert!(page.errors().is_empty(), "{:?}", page.errors());
        page.screenshot("dashboard-importance.png");
    })
    .await;
}

/// A command sweep over `alpha x depth` reporting its own `score`: no phantom grid cell, its own
/// metric charted (every run's curve, a slice per parameter,
/// the contour over its two), its columns in the table; the sweep list names it with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sweep_is_charted_on_its_own_axes_and_metric() {
    let app = spawn_app().await;
    let id = crate::any_sweep::command_sweep(&app).await;
    let base = app.base.clone();
    blocking(move || {
        let page = Page::open(&format!("{base}/#/sweeps/{id}"));
        page.wait(
            "document.querySelectorAll('#runs path').length === 2 && document.querySelectorAll('#runs circle').length === 1",
            "a curve per run with a score (a dot for the one with one epoch)",
        );
        assert!(page
            .eval("document.querySelector('#heatmap') === null")
            .as_bool()
            .unwrap());
        let text = page.text();
        assert!(
            !text.contains("32 × 1e-2") && !text.contains("batch \\ lr"),
            "{text}"
        );
        page.wait(
            "document.querySelectorAll('#slice svg').length === 2",
            "a slice per parameter",
        );
        page.wait(
            "document.querySelectorAll('#contour rect').length === 4",
            "the contour's 2 x 2 cells",
        );
        let head = page.eval("document.querySelector('#jobs thead').innerText");
        let head = head.as_str().unwrap();
        for col in ["alpha", "depth", "score", "tokens"] {
            assert!(head.contains(col), "{col} missing from {head}");
        }
        assert!(
            !head.contains("batch_size") && !head.contains("Batch"),
            "{head}"
        );
        // Sorted by its own metric, in SQL: the best score first when descending.
        page.eval("document.querySelector('button[data-sort=\"metric:score\"]').click()");
        page.wait(
            "document.querySelector('th[aria-sort]') !== null",
            "sorted by score",
        );
        page.eval("document.querySelector('button[data-sort=\"metric:score\"]').click()");
        page.wait(
            "document.querySelector('th[aria-sort=\"descending\"]') !== null",
            "descending",
        );
        page.wait(
            "document.querySelector('#jobs tbody tr').innerText.includes('0.95')",
            "the best score first",
        );
        // A colour scale on every coloured plot.
        let legends = page.eval("String(document.querySelectorAll('svg.legend').length)");
        assert!(
            legends.as_str().unwrap().parse::<usize>().unwrap() >= 3,
            "{legends}"
        );
        assert!(page.errors().is_empty(), "{:?}", page.errors());
        page.eval("document.querySelector('#runs-overlay').scrollIntoView()");
        page.screenshot("dashboard-command-sweep.png");
        let list = Page::open(&format!("{base}/#/"));
        list.wait(
            "document.querySelector('#sweeps tbody td') !== null",
            "the sweep list",
        );
        let row = list.eval("document.querySelector('#sweeps tbody tr').innerText");
        assert!(row.as_str().unwrap().starts_with(&format!("{id}")), "{row}");
    })
    .await;
}

/// The analysis views of a search follow the metric picked, and the contour the parameters picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_views_follow_the_metric_and_parameters_picked() {
    let app = spawn_app().await;
    let (id, done) = crate::any_sweep::random_search(&app).await;
    let base = app.base.clone();
    let n = done.len();
    blocking(move || {
        let page = Page::open(&format!("{base}/#/sweeps/{id}"));
        page.wait("document.querySelectorAll('#importance rect').length === 2", "importance");
        page.wait("document.querySelectorAll('#slice svg').length === 2", "the slices");
        let dots = page.eval("String(document.querySelectorAll('#slice svg[data-axis=\"lr\"] circle').length)");
        assert_eq!(dots.as_str().unwrap(), n.to_string(), "a dot per completed job");
        page.wait("document.querySelectorAll('#contour rect').length === 900", "a 30 x 30 contour");
        assert!(page.text().contains("harmonic interpolation"), "the method said");
        let log = page.eval("document.querySelector('#slice svg[data-axis=\"lr\"]').textContent");
        assert!(log.as_str().unwrap().contains("lr (log)"), "{log}");
        // Another metric: every view follows.
        page.eval("const s = document.querySelector('#metric'); s.value = 'test_loss'; s.dispatchEvent(new Event('change'))");
        page.wait("document.querySelector('#slice svg').textContent.includes('test_loss against lr')", "the slice on test loss");
        page.wait("document.querySelector('#importance') && document.body.innerText.includes('judged on test_loss (min)')", "importance on test loss");
        // The contour's axes swapped.
        page.eval("const x = document.querySelector('#contour-x'); x.value = 'momentum'; x.dispatchEvent(new Event('change'))");
        page.wait("document.querySelector('#contour').getAttribute('aria-label').includes('over momentum and')", "momentum across");
        assert!(page.errors().is_empty(), "{:?}", page.errors());
        page.eval("document.querySelector('#importance').scrollIntoView()");
        page.screenshot("dashboard-analysis.png");
    })
    .await;
}

/// Ticking jobs in the tables of two sweeps links a comparison; the link alone opens it again: curves overlaid
/// for a metric picked, parameters with the differing ones marked, summaries side by side. A job
/// page is titled with its sweep and its varying parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_ticked_in_the_table_are_compared_by_a_link() {
    let app = spawn_app().await;
    let id = crate::any_sweep::command_sweep(&app).await;
    let other = crate::any_sweep::command_sweep(&app).await;
    // Jobs of two sweeps: the first of one (alpha 0.1, shallow), the second of the other (0.1, deep).
    let a = app.sweep(id).await.jobs[0].id;
    let b = app.sweep(other).await.jobs[1].id;
    let base = app.base.clone();
    blocking(move || {
        let page = Page::open(&format!("{base}/#/sweeps/{id}"));
        page.wait("document.querySelector('input[data-compare]') !== null", "the table");
        page.eval(&format!("document.querySelector('input[data-compare=\"{a}\"]').click()"));
        page.wait("document.querySelector('#compare-link').innerText.includes('tick')", "one ticked");
        // The tick stays while another sweep's page is open.
        page.eval(&format!("location.hash = '#/sweeps/{other}'"));
        page.wait(&format!("document.querySelector('input[data-compare=\"{b}\"]') !== null"), "the other sweep's table");
        page.eval(&format!("document.querySelector('input[data-compare=\"{b}\"]').click()"));
        page.wait("document.querySelector('a#compare-link') !== null", "the link");
        let href = page.eval("document.querySelector('a#compare-link').getAttribute('href')");
        assert_eq!(href.as_str().unwrap(), format!("#/compare?jobs={a},{b}"));
        let linked = Page::open(&format!("{base}/#/compare?jobs={a},{b}&metric=score"));
        linked.wait("document.querySelectorAll('#compare-curves path').length === 2", "two curves");
        let differs = linked.eval("document.querySelector('#compare-params tr.differs').innerText");
        assert!(differs.as_str().unwrap().starts_with("depth"), "{differs}");
        let summary = linked.eval("document.querySelector('#compare-summary').innerText");
        assert!(summary.as_str().unwrap().contains("0.8"), "{summary}");
        linked.eval("const s = document.querySelector('#compare-metric'); s.value = 'tokens'; s.dispatchEvent(new Event('change'))");
        linked.wait("location.hash.includes('metric=tokens')", "the metric in the URL");
        assert!(linked.errors().is_empty(), "{:?}", linked.errors());
        linked.screenshot("dashboard-compare.png");
        let job = Page::open(&format!("{base}/#/jobs/{b}"));
        job.wait("document.querySelector('h1') && document.querySelector('h1').innerText.includes('alpha-depth')", "the job's title");
        let varying = job.eval("document.querySelector('#varying').innerText");
        assert_eq!(varying.as_str().unwrap(), "alpha=0.1, depth=deep");
    })
    .await;
}

/// A finite blow-up (a test loss of 7.65e18) reads as a number to 4 digits in the table, and its
/// chart goes to a log axis instead of flattening every other epoch against zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blown_up_loss_reads_as_a_number_on_a_log_axis() {
    let app = spawn_app().await;
    let id = app.submit(GRID).await.id;
    let c = app.claim("w").await.unwrap();
    app.metrics(c.id, c.attempt, 1, Some(2.1), 0.3).await;
    app.metrics(c.id, c.attempt, 2, Some(7_651_539_064_971_319_296.0), 0.1)
        .await;
    let base = app.base.clone();
    let job = c.id;
    blocking(move || {
        let page = Page::open(&format!("{base}/#/sweeps/{id}"));
        page.wait("document.querySelector('#jobs') !== null", "the table");
        let text = page.text();
        assert!(!text.contains("7651539064971319296"), "{text}");
        assert!(text.contains("7.652e18"), "{text}");
        let job_page = Page::open(&format!("{base}/#/jobs/{job}"));
        job_page.wait(
            "document.querySelector('#curves') !== null",
            "the job's charts",
        );
        let loss = job_page.eval("document.querySelector('#curves svg').textContent");
        let loss = loss.as_str().unwrap();
        assert!(
            loss.contains("(log scale)") && loss.contains("1e18"),
            "{loss}"
        );
        assert!(!job_page.text().contains("7651539064971319296"));
        assert!(job_page.errors().is_empty(), "{:?}", job_page.errors());
    })
    .await;
}

/// A search with several objectives shows its front: every trial on two objectives, the front
/// gold and (two objectives) joined, infeasible trials grey, a point opening its job; with three
/// objectives an axis picker redraws the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_with_several_objectives_shows_its_front() {
    let app = spawn_app().await;
    let three = "  { metric = \"test_loss\", mode = \"min\" },\n]";
    let (two_id, three_id) = (
        crate::objectives::finished_front_search(&app, "]").await,
        crate::objectives::finished_front_search(&app, three).await,
    );
    let (_, p) = app
        .get(&format!("/api/sweeps/{two_id}/pareto?all=true"))
        .await;
    let (front, judged) = (
        p["front_size"].as_i64().unwrap(),
        p["judged"].as_i64().unwrap(),
    );
    let base = app.base.clone();
    blocking(move || {
        let page = Page::open(&format!("{base}/#/sweeps/{two_id}"));
        page.wait(&format!("document.querySelectorAll('#pareto circle').length === {judged}"), "a point per trial");
        let gold = page.eval("String(document.querySelectorAll('#pareto circle.front').length)");
        assert_eq!(gold.as_str().unwrap(), front.to_string());
        let grey = page.eval("String(document.querySelectorAll('#pareto circle.infeasible').length)");
        assert_ne!(grey.as_str().unwrap(), "0", "infeasible trials greyed");
        assert_eq!(page.eval("String(!!document.querySelector('#pareto path.front-line'))").as_str(), Some("true"));
        let heading = page.eval("document.querySelector('#search').previousElementSibling.innerText");
        assert!(heading.as_str().unwrap().contains(&format!("front of {front} on accuracy (max), seconds (min)")), "{heading}");
        page.eval("document.querySelector('#pareto').scrollIntoView()");
        page.screenshot("dashboard-pareto.png");
        // A point opens its job.
        let job = page.eval("document.querySelector('#pareto circle.front').dataset.job");
        page.eval("document.querySelector('#pareto circle.front').dispatchEvent(new MouseEvent('click', {bubbles: true}))");
        page.wait(&format!("location.hash === '#/jobs/{}'", job.as_str().unwrap()), "the job's page");
        // Three objectives: the picker draws another pair.
        page.eval(&format!("location.hash = '#/sweeps/{three_id}'"));
        page.wait("document.querySelector('#pareto-x') !== null", "an axis picker");
        page.eval("const x = document.querySelector('#pareto-x'); x.value = '2'; x.dispatchEvent(new Event('change'))");
        page.wait("document.querySelector('#pareto').getAttribute('aria-label').includes('against test_loss (min)')", "test loss across");
        assert!(page.errors().is_empty(), "{:?}", page.errors());
    })
    .await;
}

/// A PBT sweep's page draws its population (every member's curve and each exploit's jump) and each
/// explored value's schedule; an exploited member's page lists its jump with the donor linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbt_sweep_shows_its_population_and_a_member_its_jumps() {
    let app = spawn_app().await;
    let (id, a, b) = crate::pbt::two_members_b_copies_a(&app).await;
    assert_eq!(app.job_detail(b).await.segments.len(), 1, "B exploited A");
    let url = format!("{}/#/sweeps/{id}", app.base);
    let page = blocking(move || Page::open(&url)).await;
    blocking(move || {
        page.wait(
            "document.querySelectorAll('#population figure').length === 2",
            "the metric's chart and lr's schedule",
        );
        let legend = page.eval("document.querySelector('#population figcaption').innerText");
        assert!(
            legend
                .as_str()
                .unwrap()
                .contains(&format!("#{b} ← #{a} at 2")),
            "{legend}"
        );
        let heading =
            page.eval("document.querySelector('#population').previousElementSibling.innerText");
        assert!(
            heading.as_str().unwrap().contains("a population of 2"),
            "{heading}"
        );
        page.eval(&format!("location.hash = '#/jobs/{b}'; 0"));
        page.wait(
            "document.querySelectorAll('#segments tbody tr').length === 1",
            "B's jump",
        );
        let row = page.eval("document.querySelector('#segments tbody tr').innerText");
        assert!(row.as_str().unwrap().contains(&format!("#{a}")), "{row}");
        assert!(
            page.errors().is_empty(),
            "console errors: {:?}",
            page.errors()
        );
    })
    .await;
}
