//! The study's figures as PNG, drawn with plotters from the database: `lr` (the staircase), `loss` and
//! `acc` (the headline run), `batch_and_loss` and `batch_and_acc` (one line per batch size at one lr;
//! diverged runs are not drawn and are named in the caption).
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::results::export::job_batch as batch;
use crate::store::{CurvePoint, JobKey};
use protocol::JobStatus;

pub const NAMES: [&str; 5] = ["lr", "loss", "acc", "batch_and_loss", "batch_and_acc"];
pub const SIZE: (u32, u32) = (800, 500);
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("unknown figure {0:?} (lr, loss, acc, batch_and_loss, batch_and_acc)")]
    Unknown(String),
    #[error("{0}")]
    NoData(String),
    #[error("drawing failed: {0}")]
    Draw(String),
}

/// Which runs to draw.
#[derive(Debug, Clone, Default)]
pub struct FigureOptions {
    /// The headline run of `lr`, `loss` and `acc` (default: batch 32 at lr 1e-2, else the best run).
    pub job: Option<i64>,
    /// The lr of the per-batch-size figures (default: 1e-2 when the sweep has it, else its largest).
    pub lr: Option<f64>,
}

/// Drawn figures, reused while nothing they show has changed: a dashboard refreshing, or several
/// readers of one sweep, cost one drawing. Keyed by the figure and its options; valid while the
/// sweep's jobs (id, status, attempt, epoch) are as they were when it was drawn. Bounded: past
/// [`FigureCache::CAPACITY`] entries it starts over.
#[derive(Debug, Default)]
pub struct FigureCache(std::sync::Mutex<std::collections::HashMap<CacheKey, (u64, Png)>>);

/// (sweep, figure, headline job, lr bits).
type CacheKey = (i64, String, Option<i64>, Option<u64>);
type Png = std::sync::Arc<Vec<u8>>;

impl FigureCache {
    pub const CAPACITY: usize = 256;

    /// What the figure depends on, in one number.
    pub fn stamp(jobs: &[JobKey]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for j in jobs {
            (j.id, j.status.as_str(), j.attempt, j.epoch).hash(&mut h);
        }
        h.finish()
    }

    fn key(
        sweep: i64,
        name: &str,
        opts: &FigureOptions,
    ) -> (i64, String, Option<i64>, Option<u64>) {
        (sweep, name.to_string(), opts.job, opts.lr.map(f64::to_bits))
    }

    pub fn get(&self, sweep: i64, name: &str, opts: &FigureOptions, stamp: u64) -> Option<Png> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&Self::key(sweep, name, opts))
            .filter(|(s, _)| *s == stamp)
            .map(|(_, png)| png.clone())
    }

    pub fn put(&self, sweep: i64, name: &str, opts: &FigureOptions, stamp: u64, png: Png) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(Self::key(sweep, name, opts), (stamp, png));
    }
}

/// Text needs a TTF; Debian's fonts-dejavu-core provides one (scripts/setup.sh installs it).
fn font() -> Result<(), FigureError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no DejaVuSans.ttf in {FONT_PATHS:?}: install Debian's fonts-dejavu-core"
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "invalid font file".to_string())
        })
        .clone()
        .map_err(FigureError::Draw)
}

fn headline<'a>(jobs: &'a [JobKey], opts: &FigureOptions) -> Option<&'a JobKey> {
    if let Some(id) = opts.job {
        return jobs.iter().find(|j| j.id == id);
    }
    jobs.iter()
        .find(|j| batch(j) == 32 && j.lr == Some(1e-2) && j.reported)
        .or_else(|| {
            jobs.iter()
                .filter(|j| j.status != JobStatus::Diverged)
                .max_by(|a, b| acc_of(a).total_cmp(&acc_of(b)))
        })
}

fn acc_of(j: &JobKey) -> f64 {
    j.accuracy.unwrap_or(-1.0)
}

/// One line of a chart: label and (x, y) points.
type Line = (String, Vec<(f64, f64)>);

fn series(
    points: &[CurvePoint],
    job: i64,
    f: impl Fn(&CurvePoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.job_id == job)
        .filter_map(|p| f(p).filter(|y| y.is_finite()).map(|y| (p.epoch as f64, y)))
        .collect()
}

/// The jobs figure `name` draws: the headline run, or one run per batch size at the chosen lr. The
/// caller loads only their epochs (a sweep may hold millions of metric rows; a figure needs ten runs).
pub fn drawn_jobs(
    name: &str,
    jobs: &[JobKey],
    opts: &FigureOptions,
) -> Result<Vec<i64>, FigureError> {
    match name {
        "lr" | "loss" | "acc" => Ok(headline(jobs, opts).map(|j| vec![j.id]).unwrap_or_default()),
        "batch_and_loss" | "batch_and_acc" => {
            let Some(lr) = chosen_lr(jobs, opts) else {
                return Ok(vec![]);
            };
            Ok(runs_by_batch(jobs, lr).values().map(|j| j.id).collect())
        }
        other => Err(FigureError::Unknown(other.into())),
    }
}

/// The runs the per-batch-size figures draw at `lr`: the first non-diverged run of each batch size.
fn runs_by_batch(jobs: &[JobKey], lr: f64) -> BTreeMap<i64, &JobKey> {
    let mut by_batch = BTreeMap::new();
    for j in jobs
        .iter()
        .filter(|j| j.lr == Some(lr) && j.status != JobStatus::Diverged)
    {
        by_batch.entry(batch(j)).or_insert(j);
    }
    by_batch
}

fn chosen_lr(jobs: &[JobKey], opts: &FigureOptions) -> Option<f64> {
    let lrs: Vec<f64> = jobs.iter().filter_map(|j| j.lr).collect();
    opts.lr
        .or_else(|| lrs.iter().copied().find(|&l| l == 1e-2))
        .or_else(|| lrs.iter().copied().reduce(f64::max))
}

/// Renders figure `name` of a sweep as PNG bytes.
pub fn render(
    name: &str,
    sweep: &str,
    jobs: &[JobKey],
    points: &[CurvePoint],
    opts: &FigureOptions,
) -> Result<Vec<u8>, FigureError> {
    font()?;
    let (title, y_label, lines) = match name {
        "lr" | "loss" | "acc" => headline_figure(name, sweep, jobs, points, opts)?,
        "batch_and_loss" | "batch_and_acc" => batch_figure(name, sweep, jobs, points, opts)?,
        other => return Err(FigureError::Unknown(other.into())),
    };
    draw(&title, y_label, &lines)
}

/// A figure's title, y label and lines.
type Figure = (String, &'static str, Vec<Line>);

/// `lr`, `loss` or `acc` of the headline run.
fn headline_figure(
    name: &str,
    sweep: &str,
    jobs: &[JobKey],
    points: &[CurvePoint],
    opts: &FigureOptions,
) -> Result<Figure, FigureError> {
    let j = headline(jobs, opts).ok_or_else(|| FigureError::NoData("no run to draw".into()))?;
    let run = format!("batch {}, lr {:e}", batch(j), j.lr.unwrap_or(f64::NAN));
    Ok(match name {
        "lr" => {
            // A staircase: each epoch's lr held over that epoch.
            let mut pts = vec![];
            for (e, lr) in series(points, j.id, |p| p.lr) {
                pts.push((e - 1.0, lr));
                pts.push((e, lr));
            }
            (
                format!("{sweep}: learning rate per epoch ({run})"),
                "learning rate",
                vec![("lr".into(), pts)],
            )
        }
        "loss" => (
            format!("{sweep}: loss ({run})"),
            "cross-entropy loss",
            vec![
                ("test loss".into(), series(points, j.id, |p| p.test_loss)),
                ("train loss".into(), series(points, j.id, |p| p.train_loss)),
            ],
        ),
        _ => (
            format!("{sweep}: test accuracy ({run})"),
            "test accuracy (%)",
            vec![(
                "test accuracy".into(),
                series(points, j.id, |p| p.accuracy.map(|a| 100.0 * a)),
            )],
        ),
    })
}

/// `batch_and_loss` or `batch_and_acc`: one line per batch size at the chosen lr.
fn batch_figure(
    name: &str,
    sweep: &str,
    jobs: &[JobKey],
    points: &[CurvePoint],
    opts: &FigureOptions,
) -> Result<Figure, FigureError> {
    let lr = chosen_lr(jobs, opts)
        .ok_or_else(|| FigureError::NoData("the sweep has no lr axis".into()))?;
    let diverged: Vec<String> = jobs
        .iter()
        .filter(|j| j.lr == Some(lr) && j.status == JobStatus::Diverged)
        .map(|j| batch(j).to_string())
        .collect();
    let loss = name == "batch_and_loss";
    let lines = runs_by_batch(jobs, lr)
        .iter()
        .map(|(b, j)| {
            let pts = if loss {
                series(points, j.id, |p| p.test_loss)
            } else {
                series(points, j.id, |p| p.accuracy.map(|a| 100.0 * a))
            };
            (format!("batch {b}"), pts)
        })
        .collect();
    let (what, y_label) = if loss {
        ("test loss", "test loss")
    } else {
        ("test accuracy", "test accuracy (%)")
    };
    let note = if diverged.is_empty() {
        String::new()
    } else {
        format!("; diverged, not drawn: batch {}", diverged.join(", "))
    };
    Ok((
        format!("{sweep}: {what} by batch size, lr {lr:e}{note}"),
        y_label,
        lines,
    ))
}

/// Values beyond this are drawn at it: a diverging loss of 1e30 must not stretch the axis into
/// ranges where the mesh's tick arithmetic overflows (a 1.7e308 loss once hung a drawing thread).
const Y_LIMIT: f64 = 1e9;

/// The axes' ranges (x, then y with its padding) and the y labels' format, from every point drawn.
#[allow(clippy::type_complexity)]
fn axes(
    all: &[(f64, f64)],
) -> Result<((f64, f64), (f64, f64, f64), impl Fn(&f64) -> String), FigureError> {
    if all.is_empty() {
        return Err(FigureError::NoData("no recorded epochs to draw yet".into()));
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (mut y0, mut y1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if y1 - y0 <= 1e-9 * y1.abs().max(1e-12) {
        // A constant series (an lr without warm-up or decay): show it against zero, not as a sliver.
        y0 = y0.min(0.0);
        y1 = if y1 > 0.0 { y1 * 1.25 } else { y1 + 1.0 };
    }
    let pad = (y1 - y0) * 0.05;
    let span = y1 - y0 + 2.0 * pad;
    if ![x0, x1, y0, y1, pad, span].iter().all(|v| v.is_finite()) || x1 - x0 > 1e6 {
        return Err(FigureError::NoData(
            "the recorded values cannot be drawn".into(),
        ));
    }
    let decimals = ((-span.log10()).ceil() as i32 + 1).clamp(0, 6) as usize;
    let scientific = y0.abs().max(y1.abs()) < 1e-3;
    let y_fmt = move |v: &f64| {
        if scientific && *v != 0.0 {
            format!("{v:.1e}")
        } else {
            format!("{v:.decimals$}")
        }
    };
    Ok(((x0, x1), (y0, y1, pad), y_fmt))
}

fn draw(title: &str, y_label: &str, lines: &[Line]) -> Result<Vec<u8>, FigureError> {
    let lines: Vec<Line> = lines
        .iter()
        .map(|(label, pts)| {
            let pts = pts
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| (x, y.clamp(-Y_LIMIT, Y_LIMIT)))
                .collect();
            (label.clone(), pts)
        })
        .collect();
    let lines = &lines[..];
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let ((x0, x1), (y0, y1, pad), y_fmt) = axes(&all)?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let err = |e: &dyn std::fmt::Display| FigureError::Draw(e.to_string());
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0.min(x1 - 1.0)..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .y_label_formatter(&y_fmt)
            .x_labels(((x1 - x0) as usize).clamp(2, 12))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (label, pts)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    encode_png(&buf, w, h)
}

/// The RGB buffer as PNG bytes.
fn encode_png(buf: &[u8], w: u32, h: u32) -> Result<Vec<u8>, FigureError> {
    let err = |e: png::EncodingError| FigureError::Draw(e.to_string());
    let mut png_bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut png_bytes, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(err)?;
    writer.write_image_data(buf).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(png_bytes)
}

/// The front of a sweep with several objectives as PNG (`pareto.png`): every trial that reported
/// the first two objectives, the front gold and joined, infeasible trials grey.
pub fn front_png(v: &protocol::views::ParetoView) -> Result<Vec<u8>, FigureError> {
    let (ox, oy) = match &v.objectives[..] {
        [x, y, ..] => (x, y),
        _ => return Err(FigureError::NoData("a front needs two objectives".into())),
    };
    let all: Vec<(f64, f64)> = v
        .trials
        .iter()
        .map(|t| (t.values[0], t.values[1]))
        .collect();
    if all.is_empty() {
        return Err(FigureError::NoData(
            "no completed trial reported both objectives".into(),
        ));
    }
    let span = |f: &dyn Fn(&(f64, f64)) -> f64| {
        let lo = all.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.06).max(hi.abs().max(1e-9) * 0.01);
        (lo - pad)..(hi + pad)
    };
    let (xs, ys) = (span(&|p| p.0), span(&|p| p.1));
    let mut front: Vec<(f64, f64)> = v
        .trials
        .iter()
        .filter(|t| t.front)
        .map(|t| (t.values[0], t.values[1]))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    font()?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let err = |e: &dyn std::fmt::Display| FigureError::Draw(e.to_string());
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!(
            "The front: {} of {} trials ({} {}, {} {})",
            v.front_size, v.judged, ox.metric, ox.mode, oy.metric, oy.mode
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(format!("{} ({})", ox.metric, ox.mode))
            .y_desc(format!("{} ({})", oy.metric, oy.mode))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(&e))?;
        let grey = RGBColor(196, 201, 207);
        let slate = RGBColor(91, 107, 123);
        let gold = RGBColor(242, 183, 5);
        let dots = |feasible: bool| {
            v.trials
                .iter()
                .filter(move |t| !t.front && t.feasible == feasible)
                .map(|t| (t.values[0], t.values[1]))
        };
        if !v.constraints.is_empty() {
            chart
                .draw_series(dots(false).map(|p| Circle::new(p, 4, grey.filled())))
                .map_err(|e| err(&e))?
                .label("infeasible")
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, grey.filled()));
        }
        chart
            .draw_series(dots(true).map(|p| Circle::new(p, 4, slate.filled())))
            .map_err(|e| err(&e))?
            .label("trial")
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, slate.filled()));
        if v.objectives.len() == 2 {
            chart
                .draw_series(LineSeries::new(front.iter().copied(), gold.stroke_width(2)))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(front.iter().map(|p| Circle::new(*p, 6, gold.filled())))
            .map_err(|e| err(&e))?
            .label("the front")
            .legend(move |(x, y)| Circle::new((x + 9, y), 6, gold.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    encode_png(&buf, w, h)
}
