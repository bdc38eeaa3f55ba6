// The sweep dashboard: plain JavaScript, no libraries, charts drawn as SVG. Views are chosen by the
// URL hash (#/, #/sweeps/ID, #/jobs/ID, #/compare?jobs=1,2); data comes from the coordinator's REST API and every
// server-sent event schedules a refresh of what is on screen (at most one per second); a job's
// log is appended to as its `log` events arrive.
"use strict";

const view = document.getElementById("view");
const alertBox = document.getElementById("alert");
const live = document.getElementById("live");
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#d2468c", "#57606a", "#fb8500", "#3a0ca3"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];

// What the user chose on the sweep page survives refreshes.
const ui = { sweep: null, lr: null, sort: "idx", desc: false, status: "", q: "", offset: 0, limit: 50, metric: null, colourBy: "", cx: null, cy: null, compare: [], sweepFilter: "" };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// A `--private` coordinator answers 401 until this tab has a session: ask for the token once, trade
// it for a read-only session cookie (POST /api/session), and retry. The cookie also opens the
// event stream. Concurrent requests share one prompt.
let signingIn = null;

// The admin token typed to cancel is held in memory for the page it was typed on, never in
// storage: a script that ever ran on this origin could read storage, and the tab keeps it.
let typedToken = null;
function pageToken() {
  return typedToken && typedToken.page === location.hash ? typedToken.token : null;
}

// Ends this tab's session (DELETE /api/session clears the cookie); the next read asks again.
document.querySelector("#signout")?.addEventListener("click", async () => {
  typedToken = null;
  await fetch("/api/session", { method: "DELETE" });
  location.reload();
});

function signIn() {
  signingIn ??= (async () => {
    const token = prompt("This coordinator is private. Its token:");
    if (!token) return false;
    const r = await fetch("/api/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) });
    if (r.ok) document.querySelector("#signout").hidden = false;
    return r.ok;
  })().finally(() => { setTimeout(() => { signingIn = null; }, 0); });
  return signingIn;
}

async function api(path, opts, retried) {
  const r = await fetch(path, opts);
  if (r.status === 401 && !retried && !(opts && opts.headers && opts.headers.Authorization) && await signIn()) {
    connect();
    return api(path, opts, true);
  }
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${msg}`);
  }
  return r.json();
}

function showError(e) {
  alertBox.hidden = false;
  alertBox.textContent = e.message || String(e);
}

// A learning rate as the study writes it; anything that is not a positive number (a command
// sweep's parameter may be any value) as escaped text.
function fmtLr(x) {
  if (x == null) return "";
  if (typeof x !== "number" || !(x > 0) || !isFinite(x)) return esc(typeof x === "string" ? x : JSON.stringify(x));
  const e = Math.floor(Math.log10(x));
  const m = +(x / 10 ** e).toPrecision(3);
  return m === 1 ? `1e${e}` : `${m}e${e}`;
}
const pct = (x) => (x == null ? "" : (100 * x).toFixed(2) + "%");
const num = (x, d = 4) => (x == null ? "" : Number.isNaN(x) ? "NaN" : x.toFixed(d));
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
// A command job that names no epochs may run any number (the coordinator's bound, 100,000): no total.
const UNBOUNDED_EPOCHS = 100000;
const epochOf = (j) => (j.epochs >= UNBOUNDED_EPOCHS ? `${j.epoch}` : `${j.epoch}/${j.epochs}`);
function dur(s) {
  if (s == null || !isFinite(s)) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

// ---------- charts ----------

function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const step = 10 ** Math.floor(Math.log10((hi - lo) / n));
  const k = [1, 2, 5, 10].find((f) => (hi - lo) / (f * step) <= n) * step;
  const out = [];
  for (let v = Math.ceil(lo / k) * k; v <= hi + 1e-12; v += k) out.push(+v.toPrecision(12));
  return out;
}

// series: [{name, xs, ys, note}] ; NaN/null points break the line.
function lineChart(title, xlabel, ylabel, series, opts = {}) {
  const W = 560, H = 300, L = 62, R = 12, T = 28, B = 44;
  const pts = series.flatMap((s) => s.xs.map((x, i) => [x, s.ys[i]])).filter(([, y]) => y != null && isFinite(y));
  if (!pts.length) {
    return `<figure><svg class="chart" viewBox="0 0 ${W} 80" role="img" aria-label="${esc(title)}: no data yet"><text x="12" y="20" font-weight="600">${esc(title)}</text><text x="12" y="50">no data yet</text></svg></figure>`;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (opts.yZero) y0 = Math.min(0, y0);
  // Values over three decades or more (a loss that blew up) on a log scale, so the rest stay
  // readable; labels to 4 significant digits.
  const log = y0 > 0 && y1 / y0 >= 1000;
  const fy = log ? Math.log10 : (y) => y;
  if (y1 === y0) { y1 = y0 + (Math.abs(y0) || 1) * 0.1; }
  if (x1 === x0) x1 = x0 + 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((fy(y) - fy(y0)) / (fy(y1) - fy(y0))) * (H - T - B);
  let g = `<text x="${L}" y="18" font-weight="600">${esc(title)}${log ? " (log scale)" : ""}</text>`;
  const yticks = log ? Array.from({ length: Math.floor(Math.log10(y1)) - Math.ceil(Math.log10(y0)) + 1 }, (_, i) => 10 ** (Math.ceil(Math.log10(y0)) + i)) : ticks(y0, y1);
  for (const v of yticks) {
    g += `<line x1="${L}" x2="${W - R}" y1="${sy(v)}" y2="${sy(v)}" stroke="#eee"/><text x="${L - 6}" y="${sy(v) + 4}" text-anchor="end">${fmtNum(v)}</text>`;
  }
  for (const v of ticks(x0, x1)) {
    g += `<line x1="${sx(v)}" x2="${sx(v)}" y1="${H - B}" y2="${H - B + 4}" stroke="#333"/><text x="${sx(v)}" y="${H - B + 16}" text-anchor="middle">${v}</text>`;
  }
  g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(xlabel)}</text>`;
  g += `<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(ylabel)}</text>`;
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length], dash = DASHES[i % DASHES.length];
    let d = "", pen = false;
    s.xs.forEach((x, j) => {
      const y = s.ys[j];
      if (y == null || !isFinite(y)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = true;
    });
    const shape = opts.step ? ` stroke-linejoin="miter"` : "";
    if (d) g += `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.8" stroke-dasharray="${dash}"${shape}/>`;
  });
  const legend = series.map((s, i) => `<span style="white-space:nowrap"><svg width="26" height="10" aria-hidden="true"><line x1="0" x2="26" y1="5" y2="5" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" stroke-dasharray="${DASHES[i % DASHES.length]}"/></svg> ${esc(s.name)}${s.note ? ` <em>(${esc(s.note)})</em>` : ""}</span>`).join(" ");
  return `<figure><svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg><figcaption class="muted">${legend}</figcaption></figure>`;
}

// A PBT population: every member's metric by epoch, each exploit drawn as a jump from the donor's
// point into the member's next epoch; then each explored value as a step line per member (its
// segments: the values it held from each epoch on). The first 50 members by job id.
function populationCharts(p, keys) {
  const pct = ["accuracy", "precision", "recall", "f1"].includes(p.metric);
  const val = (v) => (v == null ? NaN : pct ? 100 * v : v);
  const byJob = new Map(p.members.map((m) => [m.job_id, m]));
  const at = (m, e) => { const q = m && m.points.find((x) => x[0] === e); return q ? val(q[1]) : NaN; };
  const series = p.members.map((m) => ({ name: `#${m.job_id}`, xs: m.points.map((x) => x[0]), ys: m.points.map((x) => val(x[1])) }));
  const jumps = p.members.flatMap((m) => m.segments.slice(1).map((g) => ({
    name: `#${m.job_id} ← #${g.donor} at ${g.from_epoch}`,
    xs: [g.from_epoch, g.from_epoch + 1], ys: [at(byJob.get(g.donor), g.from_epoch), at(m, g.from_epoch + 1)],
  })));
  const shown = p.total > p.members.length ? ` (the first ${p.members.length} of ${p.total})` : "";
  let out = lineChart(`${p.metric}${pct ? " (%)" : ""} by epoch, exploits as jumps${shown}`, "epoch", p.metric, [...series, ...jumps]);
  for (const k of keys) {
    const steps = p.members.map((m) => {
      const last = m.points.length ? m.points[m.points.length - 1][0] : 1;
      const st = stairs(m.segments.map((g) => g.from_epoch + 1).concat([last + 1]), m.segments.map((g) => g.params[k]).concat([m.segments[m.segments.length - 1].params[k]]));
      return { name: `#${m.job_id}`, xs: st.xs, ys: st.ys };
    });
    out += lineChart(`${k} by epoch (each member's schedule)`, "epoch", k, steps);
  }
  return out;
}

// A staircase: each value holds until the next epoch.
function stairs(xs, ys) {
  const X = [], Y = [];
  xs.forEach((x, i) => {
    if (i > 0) { X.push(x - 1); Y.push(ys[i - 1]); }
    X.push(x - 1); Y.push(ys[i]);
    if (i === xs.length - 1) { X.push(x); Y.push(ys[i]); }
  });
  return { xs: X, ys: Y };
}

// ---------- random search: the sampled points ----------

// One axis per drawn parameter: log where the values span a scale (lr, batch size), else linear;
// strings and booleans as evenly spaced categories. pos(v) is in [0, 1].
function axisFor(key, dist, values) {
  if (values.some((v) => typeof v !== "number")) {
    const cats = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
    const at = (c) => (cats.length > 1 ? cats.indexOf(c) / (cats.length - 1) : 0.5);
    return { label: key, pos: (v) => at(JSON.stringify(v)), ticks: cats.map((c) => [at(c), c]) };
  }
  const lo = Math.min(...values), hi = Math.max(...values);
  const log = lo > 0 && (!!(dist && dist.log_uniform) || hi / lo >= 16);
  const f = log ? Math.log10 : (x) => x;
  const pos = (v) => (f(hi) > f(lo) ? (f(v) - f(lo)) / (f(hi) - f(lo)) : 0.5);
  const show = (v) => (key === "lr" ? fmtLr(v) : String(+v.toPrecision(3)));
  return { label: log ? `${key} (log)` : key, pos, ticks: [[0, show(lo)], [1, show(hi)]] };
}

const heat = (t) => (t == null ? "#9aa3ad" : `hsl(${Math.round(10 + 110 * t)} 70% 42%)`);

// A job's latest value of a metric (a named one or a program's own).
const valueOf = (j, name) => { const m = j.latest; if (!m) return null; const v = m[name] ?? (m.extra || {})[name]; return v == null || !isFinite(v) ? null : v; };

// Each job's final value of the sweep's metric as a colour, worst red to best green, and the
// scale's legend.
function colourer(jobs, metric) {
  const s = colourScale(jobs.map((j) => valueOf(j, metric.name)), metric.mode, metric.label, (v) => metricText(metric, v));
  return { colour: (j) => s.colour(valueOf(j, metric.name)), legend: s.legend };
}

const jobTitle = (j, keys, metric) => `#${j.id} ${j.status}${j.status === "pruned" ? ` at epoch ${j.epoch}` : ""}: ${keys.map((k) => `${k}=${JSON.stringify(j.params[k])}`).join(" ")}, ${metric.name} ${metricText(metric, valueOf(j, metric.name)) || "–"}`;

// The sampled points on the first two drawn parameters, coloured by the sweep's metric; a pruned
// job is a ring.
function scatter(space, jobs, metric) {
  const keys = Object.keys(space);
  const W = 560, H = 340, L = 62, R = 36, T = 28, B = 48;
  const x = axisFor(keys[0], space[keys[0]], jobs.map((j) => j.params[keys[0]]));
  const y = keys[1] ? axisFor(keys[1], space[keys[1]], jobs.map((j) => j.params[keys[1]]))
    : (() => { const v = valueScale(jobs.map((j) => valueOf(j, metric.name)), metric.percent); return { label: metric.label, pos: (x) => v.pos(x), ticks: v.ticks }; })();
  const yOf = (j) => (keys[1] ? j.params[keys[1]] : valueOf(j, metric.name));
  // Inset from the axes, so points at the ends of a range stay whole.
  const sx = (t) => L + 10 + t * (W - L - R - 20), sy = (t) => H - B - 10 - t * (H - T - B - 20);
  const { colour, legend } = colourer(jobs, metric);
  let g = `<text x="${L}" y="18" font-weight="600">Sampled points, coloured by ${esc(metric.label)}</text>`;
  g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
  for (const [t, label] of x.ticks) g += `<text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${esc(label)}</text>`;
  for (const [t, label] of y.ticks) g += `<text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${esc(label)}</text>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(x.label)}</text>`;
  g += `<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(y.label)}</text>`;
  for (const j of jobs) {
    const c = colour(j), ring = j.status === "pruned", yv = yOf(j);
    // Without a value yet (the y axis being the metric), at the foot of the axis.
    const ty = yv == null ? 0 : y.pos(yv);
    g += `<circle cx="${sx(x.pos(j.params[keys[0]])).toFixed(1)}" cy="${sy(ty).toFixed(1)}" r="5" fill="${ring ? "none" : c}" stroke="${c}" stroke-width="2"><title>${esc(jobTitle(j, keys, metric))}</title></circle>`;
  }
  return `<figure><svg class="chart" id="scatter" viewBox="0 0 ${W} ${H}" role="img" aria-label="sampled points coloured by ${esc(metric.label)}">${g}</svg>
    <figcaption class="muted">filled: ran to its end or still running; ring: pruned; grey: no value yet. ${legend}</figcaption></figure>`;
}

// Parallel coordinates: one vertical axis per drawn parameter and one for the sweep's metric,
// scaled to the values reported (never a fixed 0-100%); each job a line across them.
function parallel(space, jobs, metric) {
  const keys = Object.keys(space);
  const axes = keys.map((k) => axisFor(k, space[k], jobs.map((j) => j.params[k])));
  const v = valueScale(jobs.map((j) => valueOf(j, metric.name)), metric.percent);
  axes.push({ label: metric.label, pos: (x) => v.pos(x), ticks: [v.ticks[0], v.ticks[v.ticks.length - 1]] });
  const W = 560, H = 340, L = 40, R = 48, T = 60, B = 30;
  const ax = (i) => L + (axes.length > 1 ? (i / (axes.length - 1)) * (W - L - R) : 0);
  const sy = (t) => H - B - t * (H - T - B);
  const { colour, legend } = colourer(jobs, metric);
  let g = `<text x="8" y="18" font-weight="600">All parameters, one line per job</text>`;
  for (const j of jobs) {
    const vals = keys.map((k) => j.params[k]).concat([valueOf(j, metric.name)]);
    const d = vals.map((v, i) => (v == null ? null : `${ax(i).toFixed(1)},${sy(axes[i].pos(v)).toFixed(1)}`)).filter(Boolean);
    if (d.length > 1) g += `<polyline points="${d.join(" ")}" fill="none" stroke="${colour(j)}" stroke-width="1.4" stroke-opacity=".75"${j.status === "pruned" ? ` stroke-dasharray="4 3"` : ""}><title>${esc(jobTitle(j, keys, metric))}</title></polyline>`;
  }
  axes.forEach((a, i) => {
    g += `<line x1="${ax(i)}" x2="${ax(i)}" y1="${T}" y2="${H - B}" stroke="#333"/><text x="${ax(i)}" y="${T - 22}" text-anchor="middle" font-weight="600">${esc(a.label)}</text>`;
    // Labels of an axis's two ends: below its foot and above its head.
    for (const [t, label] of a.ticks) g += `<text x="${ax(i) + 4}" y="${sy(t) + (t === 0 ? 14 : -4)}">${esc(label)}</text>`;
  });
  return `<figure><svg class="chart" id="parallel" viewBox="0 0 ${W} ${H}" role="img" aria-label="parallel coordinates of the drawn parameters and ${esc(metric.label)}">${g}</svg>
    <figcaption class="muted">dashed: pruned. ${legend}</figcaption></figure>`;
}

// ---------- TPE: the optimisation history ----------

// A completed trial's value on the search's metric (a named metric or a command's own).
function objective(t, j) {
  const m = j.latest;
  if (!m || j.status !== "completed") return null;
  const v = m[t.metric] ?? (m.extra || {})[t.metric];
  return v == null || !isFinite(v) ? null : v;
}

// Each completed trial's value by trial number (the order drawn), the best so far as a line, the
// best trial ringed.
function history(t, trials) {
  const W = 560, H = 340, L = 62, R = 12, T = 28, B = 48;
  const ys = trials.map((j) => objective(t, j));
  const better = (a, b) => (t.mode === "max" ? a > b : a < b);
  let best = null;
  const bests = ys.map((y) => { if (y != null && (best == null || better(y, best))) best = y; return best; });
  const pts = ys.filter((y) => y != null);
  const title = `Optimisation history: ${t.metric} (${t.mode}) by trial`;
  if (!pts.length) return `<figure><svg class="chart" id="history" viewBox="0 0 ${W} 80" role="img" aria-label="${esc(title)}: no completed trial yet"><text x="12" y="20" font-weight="600">${esc(title)}</text><text x="12" y="50">no completed trial yet</text></svg></figure>`;
  let y0 = Math.min(...pts), y1 = Math.max(...pts);
  if (y1 === y0) y1 = y0 + (Math.abs(y0) || 1) * 0.1;
  const x1 = Math.max(1, trials.length - 1);
  const sx = (x) => L + 8 + (x / x1) * (W - L - R - 16), sy = (y) => H - B - 8 - ((y - y0) / (y1 - y0)) * (H - T - B - 16);
  let g = `<text x="${L}" y="18" font-weight="600">${esc(title)}</text>`;
  for (const v of ticks(y0, y1)) g += `<line x1="${L}" x2="${W - R}" y1="${sy(v)}" y2="${sy(v)}" stroke="#eee"/><text x="${L - 6}" y="${sy(v) + 4}" text-anchor="end">${+v.toPrecision(4)}</text>`;
  for (const v of ticks(0, x1).filter((v) => Number.isInteger(v))) g += `<text x="${sx(v)}" y="${H - B + 16}" text-anchor="middle">${v}</text>`;
  g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">trial</text>`;
  let d = "";
  bests.forEach((b, i) => { if (b != null) d += `${d ? "H" + sx(i).toFixed(1) + "V" : "M" + sx(i).toFixed(1) + ","}${sy(b).toFixed(1)}`; });
  g += `<path class="best-so-far" d="${d}" fill="none" stroke="${COLORS[0]}" stroke-width="1.8"/>`;
  trials.forEach((j, i) => {
    if (ys[i] == null) return;
    const top = j.id === t.best_job;
    g += `<circle${top ? ` class="best"` : ""} cx="${sx(i).toFixed(1)}" cy="${sy(ys[i]).toFixed(1)}" r="${top ? 7 : 4}" fill="${top ? "#f2b705" : "#5b6b7b"}" stroke="#222" stroke-width="${top ? 2 : 0.5}"><title>trial ${i}, job #${j.id}: ${t.metric} ${+ys[i].toPrecision(6)}</title></circle>`;
  });
  return `<figure><svg class="chart" id="history" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg>
    <figcaption class="muted">dots: completed trials; line: the best so far; gold: the best trial.</figcaption></figure>`;
}

// Epochs run against running every job to its end: what early stopping saved.
function budget(s) {
  // Open-ended command jobs (no epochs given) have no budget to run against.
  if (!s.epochs_budget || s.epochs_budget / Math.max(1, s.total) >= UNBOUNDED_EPOCHS) return "";
  const saved = s.status === "finished" ? ` (${(100 * (1 - s.epochs_spent / s.epochs_budget)).toFixed(1)}% saved)` : "";
  const rule = s.spec && s.spec.early_stop;
  const what = rule ? ` Early stopping: ${esc(rule.method)} on ${esc(rule.metric)} (${esc(rule.mode)}); ${s.pruned} pruned.` : "";
  return `<p class="muted" id="budget">Epochs run: ${s.epochs_spent} of ${s.epochs_budget}${rule ? saved : ""}.${what}</p>`;
}

// Why a sweep whose jobs all wait may wait for ever (as `server status` says it).
function pendingHint(s) {
  if (!s.pending || s.pending < s.total) return "";
  const why = s.spec && s.spec.command
    ? "command jobs run only on a worker started with <code>worker run --allow-commands</code>"
    : "no worker has claimed one yet: start one with <code>worker run --server URL --token WORKER_TOKEN</code> (docs/running.md)";
  return `<p class="muted" id="pending-hint">All pending: ${why}.</p>`;
}

// An analysis answer, asked again only when more jobs have completed, and at most every 30 s (on a
// 100,000-job sweep one answer takes about a second of the coordinator's time). An error (too few
// jobs with a value of this metric, say) is shown as what it says, never as a blank plot.
const analysisCache = new Map();
async function analysis(path, s) {
  const c = analysisCache.get(path);
  if (c && (c.completed === s.completed || Date.now() - c.at < 30000)) return c.answer;
  let answer;
  try { answer = { ok: await api(path) }; } catch (e) { answer = { error: e.message.replace(/^[^:]*: /, "") }; }
  analysisCache.set(path, { completed: s.completed, at: Date.now(), answer });
  return answer;
}

// The analysis of a sweep, for the metric picked (default its objective): which parameter
// mattered (two axes or more), the metric against each parameter (slice), and over two (contour).
async function analysisView(id, s, shape, metric) {
  if (!metric || !shape.axes.length || s.completed < 2) return "";
  const q = `metric=${encodeURIComponent(metric.name)}&mode=${metric.mode}`;
  const pair = ui.cx && ui.cy && ui.cx !== ui.cy ? `&x=${encodeURIComponent(ui.cx)}&y=${encodeURIComponent(ui.cy)}` : "";
  const two = shape.axes.length >= 2;
  const [imp, sl, ct] = await Promise.all([
    two ? analysis(`/api/sweeps/${id}/importance?${q}`, s) : null,
    analysis(`/api/sweeps/${id}/slice?${q}`, s),
    two ? analysis(`/api/sweeps/${id}/contour?${q}${pair}`, s) : null,
  ]);
  const shown = (a, draw, what) => (!a ? "" : a.ok ? draw(a.ok) : `<p class="muted" id="${what}-error">${esc(what)}: ${esc(a.error)}</p>`);
  return `<h2>Analysis <span class="toolbar">${metricPicker(shape, metric.name)}</span></h2>
    ${shown(imp, importanceBars, "importance")}
    ${shown(sl, (x) => slicePlots(x, metric), "slice")}
    ${shown(ct, (x) => contourPlot(x, metric, shape), "contour")}`;
}

// ---------- views ----------

function progressBar(s) {
  const parts = ["completed", "running", "pruned", "diverged", "failed", "cancelled", "pending"];
  const spans = parts.filter((p) => s[p] > 0).map((p) => `<span class="s-${p}" style="width:${(100 * s[p]) / Math.max(1, s.total)}%" title="${p}: ${s[p]}"></span>`).join("");
  const words = parts.filter((p) => s[p] > 0).map((p) => `${s[p]} ${p}`).join(", ");
  return `<div class="bar" aria-hidden="true">${spans}</div><div class="muted">${words || "no jobs"}</div>`;
}

async function sweepsView() {
  const sweeps = await api("/api/sweeps");
  const f = ui.sweepFilter.trim().toLowerCase();
  const shown = sweeps.filter((s) => !f || `#${s.id} ${s.name} ${s.status}`.toLowerCase().includes(f));
  // How long it ran: to its last job's end once finished, to now while it runs.
  const elapsed = (s) => dur(((["finished", "cancelled"].includes(s.status) ? s.last_finished_at || s.created_at : Date.now()) - s.created_at) / 1000);
  const rows = shown.map((s) => `<tr>
    <td class="num">${s.id}</td>
    <td><a href="#/sweeps/${s.id}">${esc(s.name)}</a></td>
    <td>${when(s.created_at)}</td>
    <td class="num">${elapsed(s)}</td>
    <td><span class="status">${esc(s.status)}</span></td>
    <td>${progressBar(s)}</td>
    <td class="num">${s.total}</td>
    <td class="num">${pct(s.best_accuracy)}</td></tr>`).join("");
  const empty = sweeps.length ? "No sweep matches the filter." : "No sweeps yet: submit one with <code>server submit sweeps/FILE.toml</code>.";
  return `<h1>Sweeps</h1>
    <div class="toolbar"><label>Filter <input id="sweep-filter" type="search" value="${esc(ui.sweepFilter)}" placeholder="id, name or status"></label>
      <span class="muted">${shown.length} of ${sweeps.length}</span></div>
    <div class="scroll"><table id="sweeps"><thead><tr><th class="num">ID</th><th>Name</th><th>Created</th><th class="num">Elapsed</th><th>Status</th><th>Progress</th><th class="num">Jobs</th><th class="num">Best accuracy</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="8" class="muted">${empty}</td></tr>`}</tbody></table></div>`;
}

function wireSweeps() {
  const f = view.querySelector("#sweep-filter");
  let timer = null;
  f?.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { ui.sweepFilter = f.value; render(); }, 200); });
}

function heatmap(cells) {
  const bss = [...new Set(cells.map((c) => c.batch_size))].sort((a, b) => a - b);
  const lrs = [...new Set(cells.map((c) => c.lr))].sort((a, b) => b - a);
  const at = new Map(cells.map((c) => [`${c.batch_size}|${c.lr}`, c]));
  const accs = cells.map((c) => c.accuracy).filter((a) => a != null);
  const lo = Math.min(...accs, 1), hi = Math.max(...accs, 0);
  const body = bss.map((bs) => `<tr><th scope="row">${esc(bs)}</th>${lrs.map((lr) => {
    const c = at.get(`${bs}|${lr}`);
    if (!c) return `<td class="muted">–</td>`;
    if (c.diverged > 0 && c.diverged === c.jobs) return `<td class="nan" title="diverged">NaN</td>`;
    if (c.accuracy == null) return `<td class="muted">${c.running ? "running" : "pending"}</td>`;
    const bg = cellColour(hi > lo ? (c.accuracy - lo) / (hi - lo) : 1);
    const partial = c.epoch < c.epochs ? ` <small class="muted">(epoch ${c.epoch}/${c.epochs})</small>` : "";
    return `<td style="background:${bg}">${pct(c.accuracy)}${partial}</td>`;
  }).join("")}</tr>`).join("");
  const legend = accs.length ? `<p class="muted"><svg class="legend" width="220" height="30" role="img" aria-label="colour scale: accuracy from ${pct(lo)} to ${pct(hi)}">
    <defs><linearGradient id="heat-scale"><stop offset="0" stop-color="${cellColour(0)}"/><stop offset="1" stop-color="${cellColour(1)}"/></linearGradient></defs>
    <rect x="0" y="2" width="140" height="10" fill="url(#heat-scale)"/><text x="0" y="26">${pct(lo)}</text><text x="140" y="26" text-anchor="end">${pct(hi)}</text><text x="148" y="11">accuracy</text></svg></p>` : "";
  return `<div class="scroll"><table class="heat" id="heatmap" aria-label="final accuracy by batch size and learning rate">
    <thead><tr><th>batch \\ lr</th>${lrs.map((lr) => `<th scope="col">${fmtLr(lr)}</th>`).join("")}</tr></thead><tbody>${body}</tbody></table></div>${legend}`;
}

// A heatmap cell's background: pale red (lowest) to green (highest).
const cellColour = (t) => `hsl(${Math.round(10 + 110 * t)} 70% ${Math.round(88 - 18 * t)}%)`;

// The named metrics the job page can sort by in SQL; any other is a program's own (`metric:NAME`).
const SORTABLE = ["test_loss", "train_loss", "accuracy", "precision", "recall", "f1", "images_per_sec"];

// The job table's columns, from the sweep's own shape: its axes, then status, then its objective,
// accuracy, test loss and a program's own metrics. [sort key, label, numeric, what it shows].
function tableColumns(shape) {
  const cols = [["idx", "Job"]];
  for (const a of shape.axes) cols.push([["batch_size", "lr"].includes(a.name) ? a.name : `param:${a.name}`, a.name, a.scale !== "choice", { param: a.name }]);
  cols.push(["status", "Status"], ["attempt", "Attempt", true], ["epoch", "Epoch", true]);
  const named = (n) => SORTABLE.includes(n) || n === "lr" || n === "seconds";
  const shown = shape.metrics.filter((m) => m.name === shape.objective || ["accuracy", "test_loss"].includes(m.name) || !named(m.name)).slice(0, 6);
  for (const m of shown) if (m.name !== "lr" && m.name !== "seconds") cols.push([SORTABLE.includes(m.name) ? m.name : `metric:${m.name}`, m.label, true, { metric: m }]);
  const ips = shape.metrics.find((m) => m.name === "images_per_sec");
  if (ips && !shown.includes(ips)) cols.push(["images_per_sec", "Images/s", true, { metric: ips }]);
  cols.push([null, "ETA", true], ["worker", "Worker"]);
  return cols;
}

// A parameter's value in a cell: an lr as the study writes it, other numbers to 4 digits, text as text.
const paramText = (k, v) => (v == null ? "" : k === "lr" && typeof v === "number" ? fmtLr(v) : typeof v === "number" ? fmtNum(v) : esc(typeof v === "string" ? v : JSON.stringify(v)));

function jobTable(page, shape) {
  const cols = tableColumns(shape);
  const head = `<th><span class="sr-only">compare</span></th>` + cols.map(([key, label, isNum]) => {
    const cls = isNum ? ` class="num"` : "";
    if (!key) return `<th${cls}>${esc(label)}</th>`;
    const sorted = ui.sort === key;
    const aria = sorted ? ` aria-sort="${ui.desc ? "descending" : "ascending"}"` : "";
    return `<th${cls}${aria}><button data-sort="${esc(key)}">${esc(label)}${sorted ? (ui.desc ? " ▼" : " ▲") : ""}</button></th>`;
  }).join("");
  const rows = page.jobs.map((j) => {
    const m = j.latest || {};
    const eta = j.status === "running" && m.seconds && j.epochs < UNBOUNDED_EPOCHS ? (j.epochs - j.epoch) * m.seconds : null;
    const cells = cols.map(([key, , isNum, what]) => {
      const cls = isNum ? ` class="num"` : "";
      if (key === "idx") return `<td><a href="#/jobs/${j.id}">#${j.id}</a></td>`;
      if (what && what.param) return `<td${cls}>${paramText(what.param, j.params[what.param])}</td>`;
      if (what && what.metric) return `<td${cls}>${esc(metricText(what.metric, valueOf(j, what.metric.name)))}</td>`;
      if (key === "status") return `<td><span class="status">${esc(j.status)}</span></td>`;
      if (key === "attempt") return `<td${cls}>${j.attempt}/${j.max_attempts}</td>`;
      if (key === "epoch") return `<td${cls}>${epochOf(j)}</td>`;
      if (key === "worker") return `<td>${esc(j.worker)}</td>`;
      return `<td${cls}>${dur(eta)}</td>`;
    }).join("");
    const ticked = ui.compare.includes(j.id) ? " checked" : "";
    return `<tr><td><input type="checkbox" data-compare="${j.id}" aria-label="compare job ${j.id}"${ticked}></td>${cells}</tr>`;
  }).join("");
  const last = Math.min(page.offset + page.jobs.length, page.total);
  const n = ui.compare.length;
  const compare = (n >= 2 ? `<a id="compare-link" href="#/compare?jobs=${ui.compare.join(",")}">Compare ${n} jobs</a>` : `<span class="muted" id="compare-link">tick 2 to 5 jobs (of any sweeps) to compare</span>`)
    + (n ? ` <button id="compare-clear" title="jobs ticked: ${ui.compare.map((x) => `#${x}`).join(" ")}">Untick ${n}</button>` : "");
  return `<div class="toolbar">
      <label>Filter <input id="q" type="search" value="${esc(ui.q)}" placeholder="params or worker"></label>
      <label>Status <select id="status">${["", "pending", "running", "completed", "pruned", "diverged", "failed", "cancelled"].map((s) => `<option value="${s}"${s === ui.status ? " selected" : ""}>${s || "any"}</option>`).join("")}</select></label>
      <span class="muted" id="range">${page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no jobs match"}</span>
      <button id="prev"${page.offset === 0 ? " disabled" : ""}>Previous</button>
      <button id="next"${last >= page.total ? " disabled" : ""}>Next</button>
      ${compare}</div>
    <div class="scroll"><table id="jobs"><thead><tr>${head}</tr></thead><tbody>${rows}</tbody></table></div>`;
}

// The study's grid: its final accuracy by batch size x lr, and the learning curves at one lr.
async function studyView(id, cells, guess, guessed) {
  // Only positive learning rates have curves (a command sweep's `lr` may be anything, or absent):
  // without one the page leaves the curves out instead of failing whole.
  const lrs = [...new Set(cells.map((c) => c.lr))].filter((lr) => typeof lr === "number" && lr > 0 && isFinite(lr)).sort((a, b) => b - a);
  if (ui.lr == null || !lrs.includes(ui.lr)) ui.lr = lrs.includes(0.01) ? 0.01 : lrs[0] ?? null;
  const series = ui.lr == null ? []
    : (ui.lr === guess && (await guessed)) || await api(`/api/sweeps/${id}/curves?lr=${ui.lr}&points=150`);
  const line = (key, scale = 1) => series.map((c) => ({
    name: `batch ${c.batch_size}`, xs: c.epoch, ys: c[key].map((v) => (v == null ? NaN : scale * v)),
    note: c.status === "diverged" ? "diverged" : c.status === "running" ? "running" : "",
  }));
  const kept = (key, scale) => line(key, scale).filter((l) => l.note !== "diverged");
  const gone = line("accuracy").filter((l) => l.note === "diverged").map((l) => l.name);
  const goneNote = gone.length ? `<p class="muted">Left out (diverged): ${esc(gone.join(", "))}</p>` : "";
  const st = series[0] ? stairs(series[0].epoch, series[0].lr) : { xs: [], ys: [] };
  const curves = ui.lr == null ? "" : `<h2>Learning curves at lr <select id="lr" aria-label="learning rate">${lrs.map((lr) => `<option value="${lr}"${lr === ui.lr ? " selected" : ""}>${fmtLr(lr)}</option>`).join("")}</select></h2>
    <div class="grid2" id="curves">
      ${lineChart("Test loss", "epoch", "test loss", kept("test_loss"))}
      ${lineChart("Test accuracy (%)", "epoch", "accuracy (%)", kept("accuracy", 100))}
      ${lineChart("Learning rate", "epoch", "lr", [{ name: "lr schedule", xs: st.xs, ys: st.ys }], { yZero: true, step: true })}
    </div>${goneNote}`;
  return { overview: `<h2>Final accuracy, batch size × learning rate</h2>${heatmap(cells)}`, curves };
}

async function sweepView(id) {
  // Jobs ticked to compare stay ticked from one sweep to the next: a comparison may span sweeps.
  if (ui.sweep !== id) Object.assign(ui, { sweep: id, lr: null, sort: "idx", desc: false, status: "", q: "", offset: 0, metric: null, colourBy: "", cx: null, cy: null, px: null, py: null });
  const qs = new URLSearchParams({ offset: ui.offset, limit: ui.limit, sort: ui.sort, desc: ui.desc, status: ui.status, q: ui.q });
  // The curves at the lr the page will most likely show (the one chosen, else the study's 0.01) are
  // fetched beside the rest, not after: on a large sweep each request takes a few hundred ms.
  const guess = ui.lr ?? 0.01;
  const guessed = api(`/api/sweeps/${id}/curves?lr=${guess}&points=150`).catch(() => null);
  const [s, shape, page] = await Promise.all([
    api(`/api/sweeps/${id}?jobs=false`), api(`/api/sweeps/${id}/shape`), api(`/api/sweeps/${id}/jobs?${qs}`),
  ]);
  const metric = shape.metrics.find((m) => m.name === ui.metric) || shape.metrics.find((m) => m.name === shape.objective) || shape.metrics[0] || null;
  ui.metric = metric && metric.name;
  const base = `/api/sweeps/${id}/results`;
  let overview = "", curves = "";
  // Every run's curve of the metric, overlaid (the best 30): any sweep's learning curves; the
  // study's grid keeps its curves at one lr beside them.
  const runs = metric ? await api(`/api/sweeps/${id}/runs?metric=${encodeURIComponent(metric.name)}&mode=${metric.mode}&limit=30&points=100`) : null;
  const overlay = runs ? `<div class="single" id="runs-overlay">${runsChart(runs, metric, shape, ui.colourBy)}</div>` : "";
  if (shape.study_grid) {
    ({ overview, curves } = await studyView(id, await api(`/api/sweeps/${id}/grid`), guess, guessed));
    curves += overlay ? `<h2>Every run</h2>${overlay}` : "";
  } else if (overlay) {
    curves = `<h2>Learning curves</h2>${overlay}`;
  }
  // A search has no grid to colour: its points, and all its parameters, instead.
  const space = s.spec && s.spec.search && s.spec.search.space;
  if (space && Object.keys(space).length && metric) {
    // Only drawn trials have points (a TPE trial is drawn when claimed), in the order drawn.
    const all = (await api(`/api/sweeps/${id}`)).jobs.filter((j) => j.drawn_at != null)
      .sort((a, b) => a.drawn_at - b.drawn_at || a.id - b.id);
    const t = s.tpe;
    const method = { nsga2: "NSGA-II", random: "Random search", tpe: "TPE" }[t && t.method] || "TPE";
    if (t && t.method === "pbt") {
      const p = await api(`/api/sweeps/${id}/population?limit=50`);
      const pct = ["accuracy", "precision", "recall", "f1"].includes(t.metric);
      const best = t.best_value == null ? "" : pct ? `${(100 * t.best_value).toFixed(2)}%` : fmtNum(t.best_value);
      overview = `<h2>Population-based training: a population of ${t.trials}${best ? `; best completed ${esc(t.metric)} ${best} (job #${t.best_job})` : ""}</h2>
        <div class="grid2" id="population">${populationCharts(p, Object.keys(space))}</div>`;
    } else if (t && t.objectives) {
      // Several objectives: no best trial, a front; its plot first.
      const p = await api(`/api/sweeps/${id}/pareto?all=true`);
      const [xi, yi] = [ui.px ?? 0, ui.py ?? 1];
      const on = t.objectives.map((o) => `${esc(o.metric)} (${esc(o.mode)})`).join(", ");
      overview = `<h2>${method}: ${t.drawn} of ${t.trials} trials drawn; front of ${t.front} on ${on}</h2><div class="grid2" id="search">${paretoView(p, shape, xi, yi)}${scatter(space, all, metric)}${parallel(space, all, metric)}</div>`;
    } else {
      overview = t
        ? `<h2>${method}: ${t.drawn} of ${t.trials} trials drawn${t.best_value != null ? `; best ${esc(t.metric)} ${fmtNum(t.best_value)} (job #${t.best_job})` : ""}</h2><div class="grid2" id="search">${history(t, all)}${scatter(space, all, metric)}${parallel(space, all, metric)}</div>`
        : `<h2>Random search: ${s.total} sampled points</h2><div class="grid2" id="search">${scatter(space, all, metric)}${parallel(space, all, metric)}</div>`;
    }
  }
  const analysed = await analysisView(id, s, shape, metric);
  return `<p><a href="#/">← all sweeps</a></p>
    <h1>${esc(s.name)} <span class="muted">#${s.id}</span> <span class="status">${esc(s.status)}</span></h1>
    ${progressBar(s)}
    ${pendingHint(s)}
    ${budget(s)}
    <div class="toolbar">
      <a href="${base}?format=markdown" download="sweep-${id}.md">Markdown</a>
      <a href="${base}?format=csv" download="sweep-${id}.csv">CSV</a>
      <a href="${base}?format=json" download="sweep-${id}.json">JSON</a>
      <button id="cancel"${["finished", "cancelled"].includes(s.status) ? " disabled" : ""}>Cancel sweep…</button>
    </div>
    ${overview}
    ${curves}
    ${analysed}
    <h2>Jobs</h2>
    ${jobTable(page, shape)}`;
}

function wireSweep(id) {
  const rerender = () => render();
  view.querySelectorAll("button[data-sort]").forEach((b) => b.addEventListener("click", () => {
    const k = b.dataset.sort;
    ui.desc = ui.sort === k ? !ui.desc : false;
    ui.sort = k; ui.offset = 0; rerender();
  }));
  const q = view.querySelector("#q");
  let timer = null;
  q?.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { ui.q = q.value; ui.offset = 0; rerender(); }, 300); });
  view.querySelector("#status")?.addEventListener("change", (e) => { ui.status = e.target.value; ui.offset = 0; rerender(); });
  view.querySelector("#prev")?.addEventListener("click", () => { ui.offset = Math.max(0, ui.offset - ui.limit); rerender(); });
  view.querySelector("#next")?.addEventListener("click", () => { ui.offset += ui.limit; rerender(); });
  view.querySelector("#lr")?.addEventListener("change", (e) => { ui.lr = Number(e.target.value); rerender(); });
  view.querySelector("#metric")?.addEventListener("change", (e) => { ui.metric = e.target.value; rerender(); });
  view.querySelector("#colour-by")?.addEventListener("change", (e) => { ui.colourBy = e.target.value; rerender(); });
  // Picking for one axis the parameter the other shows swaps the two.
  const pickAxis = (mine, other) => (e) => {
    const o = view.querySelector(other);
    ui[mine] = e.target.value;
    ui[mine === "cx" ? "cy" : "cx"] = o.value === e.target.value ? e.target.dataset.was : o.value;
    rerender();
  };
  // The front's axes: picking for one the objective the other shows swaps them.
  const pickObjective = (mine) => (e) => {
    const other = mine === "px" ? "py" : "px";
    const was = ui[mine] ?? (mine === "px" ? 0 : 1);
    const v = +e.target.value;
    if ((ui[other] ?? (other === "px" ? 0 : 1)) === v) ui[other] = was;
    ui[mine] = v;
    rerender();
  };
  view.querySelector("#pareto-x")?.addEventListener("change", pickObjective("px"));
  view.querySelector("#pareto-y")?.addEventListener("change", pickObjective("py"));
  view.querySelector("#contour-x")?.addEventListener("change", pickAxis("cx", "#contour-y"));
  view.querySelector("#contour-y")?.addEventListener("change", pickAxis("cy", "#contour-x"));
  view.querySelector("#compare-clear")?.addEventListener("click", () => { ui.compare = []; rerender(); });
  view.querySelectorAll("input[data-compare]").forEach((b) => b.addEventListener("change", () => {
    const jid = +b.dataset.compare;
    if (b.checked && ui.compare.length >= 5) { b.checked = false; showError(new Error("Compare takes at most 5 jobs: untick one first.")); return; }
    ui.compare = b.checked ? ui.compare.concat([jid]) : ui.compare.filter((x) => x !== jid);
    rerender();
  }));
  view.querySelector("#cancel")?.addEventListener("click", async () => {
    const token = pageToken() || prompt("Coordinator token (to cancel the sweep):");
    if (!token) return;
    try {
      await api(`/api/sweeps/${id}/cancel`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
      typedToken = { page: location.hash, token };
      rerender();
    } catch (e) { typedToken = null; showError(e); }
  });
}

// A stored spec's axes: its grid keys and its search space's.
const specAxes = (spec) => [...new Set([].concat((spec && spec.grid) || []).flatMap((g) => Object.keys(g)).concat(Object.keys((spec && spec.search && spec.search.space) || {})))];

async function jobView(id) {
  const j = await api(`/api/jobs/${id}`);
  const s = await api(`/api/sweeps/${j.sweep_id}?jobs=false`);
  // What this job varies first (the sweep's axes), then what every job of the sweep shares.
  const axes = specAxes(s.spec).filter((k) => k in j.params);
  const shared = Object.keys(j.params).filter((k) => !axes.includes(k));
  const varying = axes.map((k) => `${esc(k)}=${paramText(k, j.params[k])}`).join(", ");
  const paramRows = axes.map((k) => `<tr class="varies"><th scope="row">${esc(k)}</th><td>${paramText(k, j.params[k])}</td></tr>`).join("")
    + shared.map((k) => `<tr><th scope="row">${esc(k)}</th><td class="muted">${paramText(k, j.params[k])}</td></tr>`).join("");
  const col = (k) => j.metrics.map((m) => (m[k] == null ? NaN : m[k]));
  const ep = j.metrics.map((m) => m.epoch);
  const st = stairs(ep, j.metrics.map((m) => m.lr));
  // A command job's metrics of its own: one chart each.
  const own = [...new Set(j.metrics.flatMap((m) => Object.keys(m.extra || {})))].sort();
  const ownCharts = own.map((k) => lineChart(k, "epoch", k, [{ name: k, xs: ep, ys: j.metrics.map((m) => (m.extra && m.extra[k] != null ? m.extra[k] : NaN)) }])).join("");
  if (logTail.job !== j.id) logTail = { job: j.id, attempt: null, next: 0, text: "", busy: false, again: false, follow: true };
  // A gang's attempt names every member by node rank (node 0 first: it reports for the gang).
  const workers = (a) => (a.members && a.members.length ? a.members.map((m) => `node ${m.node_rank}: ${esc(m.worker)}`).join("<br>") : esc(a.worker));
  // A PBT member's jumps: each exploit's donor, the epoch it continued from, its new values.
  const segs = j.segments || [];
  const segKeys = axes.length ? axes : Object.keys((segs[0] || {}).params || {});
  const segmentRows = segs.map((g) => `<tr><td class="num">${g.segment}</td><td class="num">${g.at_epoch}</td><td><a href="#/jobs/${g.donor}">#${g.donor}</a></td><td class="num">${g.from_epoch}</td><td>${segKeys.map((k) => `${esc(k)}=${paramText(k, g.params[k])}`).join(", ")}</td><td class="num">${g.replaced.length}</td></tr>`).join("");
  const segments = segs.length ? `<h2>Population-based training</h2>
    <p class="muted">Each row: on its report of an epoch this member copied a donor's checkpoint and continued after the donor's epoch with the donor's values, explored. Epochs it went back over are kept as "replaced".</p>
    <div class="scroll"><table id="segments"><thead><tr><th class="num">#</th><th class="num">At epoch</th><th>Donor</th><th class="num">From epoch</th><th>Values</th><th class="num">Replaced</th></tr></thead><tbody>${segmentRows}</tbody></table></div>` : "";
  const attempts = j.attempts.map((a) => `<tr><td class="num">${a.attempt}</td><td>${workers(a)}</td><td>${when(a.started_at)}</td><td>${when(a.ended_at)}</td><td>${esc(a.outcome ?? "running")}</td><td>${esc(a.error)}</td></tr>`).join("");
  return `<p><a href="#/sweeps/${j.sweep_id}">← sweep ${esc(s.name)} (#${j.sweep_id})</a></p>
    <h1>Job #${j.id} of ${esc(s.name)} <span class="status">${esc(j.status)}</span></h1>
    ${varying ? `<p id="varying"><strong>${varying}</strong></p>` : ""}
    <p>Epoch ${epochOf(j)}, attempt ${j.attempt}/${j.max_attempts}${j.worker ? `, worker ${esc(j.worker)}` : ""}</p>
    <details open><summary>Parameters</summary><table id="params">${paramRows}</table></details>
    ${j.waiting ? `<p role="status" id="gang-waiting"><strong>${j.status === "pending" ? "Passed over near a worker's end" : "Gang forming"}:</strong> ${esc(j.waiting)}</p>` : ""}
    ${j.error ? `<p role="note"><strong>Error:</strong> ${esc(j.error)}</p>` : ""}
    <div class="grid2" id="curves">
      ${lineChart("Loss", "epoch", "cross-entropy", [{ name: "train", xs: ep, ys: col("train_loss") }, { name: "test", xs: ep, ys: col("test_loss") }])}
      ${lineChart("Test accuracy (%)", "epoch", "accuracy (%)", [{ name: "accuracy", xs: ep, ys: col("accuracy").map((v) => 100 * v) }])}
      ${lineChart("Learning rate", "epoch", "lr", [{ name: "lr", xs: st.xs, ys: st.ys }], { yZero: true })}
      ${ownCharts}
    </div>
    ${segments}
    <h2>Log <span class="muted" id="log-attempt">${logTail.attempt ? `attempt ${logTail.attempt}` : ""}</span></h2>
    <pre id="log" class="log" tabindex="0" aria-live="off">${esc(logTail.text || "(no output yet)")}</pre>
    <h2>Attempts</h2>
    <div class="scroll"><table id="attempts"><thead><tr><th class="num">#</th><th>Worker</th><th>Started</th><th>Ended</th><th>Outcome</th><th>Error</th></tr></thead><tbody>${attempts}</tbody></table></div>`;
}

// ---------- a job's log, tailed live ----------

// The job page's log: read from the last offset on each `log` event of that job (never whole
// again), keeping the newest LOG_KEEP characters in the page. A new attempt starts a new log.
const LOG_KEEP = 200000;
let logTail = { job: null, attempt: null, next: 0, text: "", busy: false, again: false, follow: true };

async function tailLog(id, attempt) {
  if (logTail.job !== id) return;
  if (attempt && logTail.attempt && attempt > logTail.attempt) Object.assign(logTail, { attempt, next: 0, text: "" });
  if (logTail.busy) { logTail.again = true; return; }
  logTail.busy = true;
  try {
    for (;;) {
      const at = logTail.attempt ? `&attempt=${logTail.attempt}` : "";
      const r = await fetch(`/api/jobs/${id}/log?offset=${logTail.next}${at}`);
      if (!r.ok || logTail.job !== id) break;
      const chunk = await r.text();
      const next = +r.headers.get("x-log-next");
      logTail.attempt = +r.headers.get("x-log-attempt") || logTail.attempt;
      if (next <= logTail.next) break;
      logTail.text = (logTail.text + chunk).slice(-LOG_KEEP);
      logTail.next = next;
    }
  } finally { logTail.busy = false; }
  const pre = document.getElementById("log");
  if (pre && logTail.job === id) {
    pre.textContent = logTail.text || "(no output yet)";
    // Stays at the newest line unless the reader scrolled up (re-renders keep that choice).
    if (logTail.follow) pre.scrollTop = pre.scrollHeight;
    pre.onscroll = () => { logTail.follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4; };
    const label = document.getElementById("log-attempt");
    if (label) label.textContent = logTail.attempt ? `attempt ${logTail.attempt}` : "";
  }
  if (logTail.again) { logTail.again = false; tailLog(id); }
}

function onLogEvent(e) {
  const m = (location.hash || "").match(/^#\/jobs\/(\d+)/);
  let ev = null;
  try { ev = JSON.parse(e.data); } catch (_) { return; }
  if (m && ev && ev.job_id === +m[1]) tailLog(ev.job_id, ev.attempt);
}

// ---------- routing and live updates ----------

let rendering = null, again = false;
async function render() {
  if (rendering) { again = true; return rendering; }
  rendering = (async () => {
    const hash = location.hash || "#/";
    let m;
    try {
      let html, wire = () => {};
      if ((m = hash.match(/^#\/sweeps\/(\d+)/))) { const id = +m[1]; html = await sweepView(id); wire = () => wireSweep(id); }
      else if ((m = hash.match(/^#\/jobs\/(\d+)/))) { const id = +m[1]; html = await jobView(id); wire = () => tailLog(id); }
      else if ((m = hash.match(/^#\/compare\?(.*)$/))) {
        // The selection lives in the URL, so a comparison can be linked.
        const p = new URLSearchParams(m[1]);
        const ids = (p.get("jobs") || "").split(",").filter(Boolean);
        html = await compareView(ids, p.get("metric"));
        wire = () => view.querySelector("#compare-metric")?.addEventListener("change", (e) => { location.hash = `#/compare?jobs=${ids.join(",")}&metric=${encodeURIComponent(e.target.value)}`; });
      }
      else { html = await sweepsView(); wire = wireSweeps; }
      // Keep focus and caret in the filter box across live refreshes.
      const focused = document.activeElement && document.activeElement.id;
      view.innerHTML = html;
      wire();
      if (focused) document.getElementById(focused)?.focus();
      view.setAttribute("aria-busy", "false");
      alertBox.hidden = true;
      if (!document.documentElement.dataset.firstPaintMs) {
        // Measured from navigation start: what the benchmark reads.
        document.documentElement.dataset.firstPaintMs = String(Math.round(performance.now()));
      }
      document.documentElement.dataset.renders = String(+(document.documentElement.dataset.renders || 0) + 1);
    } catch (e) { showError(e); }
  })();
  await rendering;
  rendering = null;
  if (again) { again = false; return render(); }
}

let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; render(); }, 1000);
}

let stream = null;
function connect() {
  if (stream && stream.readyState !== EventSource.CLOSED) return;
  const es = stream = new EventSource("/api/events");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; soon(); };
  es.onerror = () => {
    live.textContent = "reconnecting…"; live.className = "live off";
    // A closed stream (the coordinator answered with an error) is not retried by the browser.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
  for (const kind of ["job", "metrics", "sweep", "lagged"]) es.addEventListener(kind, soon);
  es.addEventListener("log", onLogEvent);
}

window.addEventListener("hashchange", () => { render(); });
render();
connect();
